"""Learning-rate schedule: timm's cosine scheduler, stepped once per optimiser update.

Per-update stepping (not per epoch) gives a smooth warm-up and decay, like timm's train.py with
``--sched-on-updates``. Update ``u`` (0-based, counted over the whole run; u = epoch * U + step) uses
``lr_at(cfg, u / U)``:

  - epochs [0, warmup):               warmup_lr + (lr - warmup_lr) * e / warmup       (linear)
  - epochs [warmup, cosine_epochs):   lr_min + (lr - lr_min) * (1 + cos(pi * (e - warmup) / (cosine - warmup))) / 2
  - epochs [cosine_epochs, epochs):   lr_min                                          (cool-down)

so the lr is exactly ``lr`` at the end of warm-up and exactly ``lr_min`` from epoch ``cosine_epochs``
on. This is timm's ``warmup_prefix=True`` with ``t_initial = cosine_epochs - warmup_epochs``; timm's
train.py default (warm-up overlaid on a 600-epoch cosine) would peak at 0.99983 x lr instead.
"""

from __future__ import annotations

import math

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from kdcache.recipe import TrainConfig


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int) -> Scheduler:
    if updates_per_epoch < 1:
        raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
    sched, total_epochs = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=cfg.cosine_epochs - cfg.warmup_epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        warmup_prefix=True,
        min_lr=cfg.lr_min,
        cooldown_epochs=cfg.cooldown_epochs,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    if total_epochs != cfg.epochs:  # guards against a timm change in how the phases add up
        raise RuntimeError(f"timm scheduler spans {total_epochs} epochs, the recipe {cfg.epochs}")
    return sched


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """The recipe's lr at a (fractional) epoch, in closed form (the reference the scheduler is tested against)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * epoch / cfg.warmup_epochs
    if epoch < cfg.cosine_epochs:
        frac = (epoch - cfg.warmup_epochs) / (cfg.cosine_epochs - cfg.warmup_epochs)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * frac))
    return cfg.lr_min
