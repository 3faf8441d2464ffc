"""EMA of the student (timm ModelEmaV3), with timm's warm-up or the seed's (SuperGradients') ramp."""

from __future__ import annotations

import math

from timm.utils import ModelEmaV3
from torch import nn

from kdcache.recipe import TrainConfig


def sg_exp_decay(decay: float, beta: float, step: int, total_steps: int) -> float:
    """SuperGradients' ``ExpDecay``: ``decay * (1 - exp(-beta * step / total_steps))``.

    SuperGradients calls it with ``step`` = the 0-based index of the optimiser step being taken
    (epoch * steps_per_epoch + batch) and ``total_steps`` = steps_per_epoch * max_epochs, so the first
    update has decay 0 (the EMA becomes a copy of the model) and beta=15 reaches 1 - e^-1.5 of the final
    decay at 10% of training.
    """
    return decay * (1.0 - math.exp(-beta * step / total_steps))


class ExpRampEma(ModelEmaV3):
    """ModelEmaV3 whose u-th update (u = 1, 2, ...; the trainer's ``step``) uses
    :func:`sg_exp_decay` at SuperGradients' step u - 1 of ``total_updates``. ``total_updates`` is set
    by the trainer once it knows the updates per epoch (:func:`set_total_updates`)."""

    def __init__(self, model: nn.Module, decay: float, beta: float):
        super().__init__(model, decay=decay, use_warmup=False)
        self.beta = beta
        self.total_updates: int | None = None

    def get_decay(self, step: int | None = None) -> float:
        if step is None:
            return self.decay
        if self.total_updates is None:
            raise RuntimeError("ExpRampEma needs set_total_updates() before its first update")
        return sg_exp_decay(self.decay, self.beta, max(step - 1, 0), self.total_updates)


def create_ema(model: nn.Module, cfg: TrainConfig) -> ModelEmaV3:
    """EMA over parameters and buffers, same device and dtype as the model (so it can be evaluated).

    ``ema_ramp: exp`` (the seed): SuperGradients' ramp, :class:`ExpRampEma`. Otherwise with
    ``ema_warmup`` (timm's warm-up) the u-th update (u = 1, 2, ...) uses decay
    min(ema_decay, 1 - u^(-2/3)), and 0 for u = 1 (the EMA starts as a copy of the model). The
    trainer calls ``ema.update(model, step=u)`` with the number of updates done so far.
    Create it from the unwrapped model, before any DDP wrapping.
    """
    if cfg.ema_ramp == "exp":
        return ExpRampEma(model, decay=cfg.ema_decay, beta=cfg.ema_beta)
    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)


def set_total_updates(ema: ModelEmaV3, total_updates: int) -> None:
    """Tell a ramp that depends on the length of training how many updates the run makes."""
    if isinstance(ema, ExpRampEma):
        ema.total_updates = max(int(total_updates), 1)
