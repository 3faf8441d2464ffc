"""EMA of the student (timm ModelEmaV3)."""

from __future__ import annotations

from timm.utils import ModelEmaV3
from torch import nn

from kdcache.recipe import TrainConfig


def create_ema(model: nn.Module, cfg: TrainConfig) -> ModelEmaV3:
    """EMA over parameters and buffers, same device and dtype as the model (so it can be evaluated).

    With ``ema_warmup`` (timm's warm-up) the u-th update (u = 1, 2, ...) uses decay
    min(ema_decay, 1 - u^(-2/3)), and 0 for u = 1 (the EMA starts as a copy of the model); the
    trainer calls ``ema.update(model, step=u)`` with the number of updates done so far.
    Create it from the unwrapped model, before any DDP wrapping.
    """
    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
