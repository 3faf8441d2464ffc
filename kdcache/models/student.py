"""The student network: a timm model at random init, seeded explicitly from the recipe."""

from __future__ import annotations

import timm
import torch
from torch import nn

from kdcache.recipe import TrainConfig


def create_student(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """``timm.create_model(cfg.model, pretrained=False, ...)`` on CPU, initialised from ``cfg.seed``.

    The init draws from torch's CPU generator inside ``fork_rng``: the weights depend on the seed only
    (not on what ran before), and the caller's global RNG state is left as it was.
    """
    if not timm.is_model(cfg.model):
        from kdcache.errors import UsageError

        close = timm.list_models(f"*{cfg.model.split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UsageError(
            f'--student (train.model) {cfg.model!r} is not a timm model name{hint}; `python -c "import timm; '
            f'print(timm.list_models())"` lists them'
        )
    kwargs = {}
    # Only pass regularisers that are on: not every timm architecture accepts drop_path_rate.
    if cfg.drop_rate:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return timm.create_model(cfg.model, pretrained=False, num_classes=num_classes, **kwargs)
