"""Optimiser from the recipe, via timm's factory."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2, get_optimizer_info
from torch import nn

from kdcache.recipe import TrainConfig


def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``create_optimizer_v2`` with ``filter_bias_and_bn``: 1-d parameters (norm weights, biases) get
    no weight decay.

    Gradient clipping is done by the trainer (after AMP un-scaling, for every optimiser alike), so
    LAMB's built-in global-norm clip (timm default ``max_grad_norm=1.0``) is switched off rather than
    applied twice.
    """
    info = get_optimizer_info(cfg.opt)
    kwargs: dict[str, Any] = {}
    if info.has_eps:
        kwargs["eps"] = cfg.opt_eps
    if info.has_betas:
        kwargs["betas"] = tuple(cfg.opt_betas)
    if info.opt_class.__name__ == "Lamb":
        kwargs["max_grad_norm"] = None
    return create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, filter_bias_and_bn=True, **kwargs
    )
