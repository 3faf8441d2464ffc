"""The trainer's own building blocks, for a loop of your own: the same student init, optimiser,
schedule and input normalisation as ``kdcache train``."""

from __future__ import annotations

import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn

from kdcache.models.normalize import Normalize
from kdcache.models.student import create_student as _create_student
from kdcache.recipe import Recipe, TrainConfig
from kdcache.student.optim import create_optimizer as _create_optimizer
from kdcache.student.schedule import create_scheduler as _create_scheduler


def _train(recipe: Recipe | TrainConfig) -> TrainConfig:
    return recipe.train if isinstance(recipe, Recipe) else recipe


def create_student(recipe: Recipe | TrainConfig, num_classes: int) -> nn.Module:
    """The recipe's timm student at its seeded random init (the same weights ``kdcache train`` starts from)."""
    return _create_student(_train(recipe), num_classes)


def create_optimizer(model: nn.Module, recipe: Recipe | TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser (timm's factory; no weight decay on norms and biases; LAMB's own clip off,
    because the loop clips: ``torch.nn.utils.clip_grad_norm_(params, recipe.train.clip_grad)``)."""
    return _create_optimizer(model, _train(recipe))


def create_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe | TrainConfig, steps_per_epoch: int) -> Scheduler:
    """The recipe's timm cosine schedule with warm-up and cool-down, stepped per update: call
    ``scheduler.step_update(update)`` before update ``update`` (0, 1, 2, ... over the run)."""
    return _create_scheduler(optimizer, _train(recipe), steps_per_epoch)


def normalizer(model: nn.Module) -> Normalize:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) with ``model``'s mean and std (timm's data config)."""
    return Normalize.for_model(model)
