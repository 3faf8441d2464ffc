"""uint8 NHWC views -> a model's normalised float input, on the model's device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import resolve_data_config
from torch import nn


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std a timm model expects (its pretrained_cfg, else timm's ImageNet defaults)."""
    cfg = resolve_data_config({}, model=model)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


class Normalize(nn.Module):
    """(x / 255 - mean) / std, computed as (x - 255 mean) / (255 std) in float32.

    Views travel as uint8 (4x less host-to-device traffic) and every model normalises with its own
    mean/std on its own device: BEiT uses 0.5/0.5, ResNet-50 ImageNet's. NHWC permuted to NCHW is
    already channels_last in memory, so with ``channels_last`` there is no copy at all.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be three values (std > 0), got {mean}, {std}")
        self.channels_last = channels_last
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).mul(255).view(1, 3, 1, 1), False)
        self.register_buffer("scale", torch.tensor(std, dtype=torch.float32).mul(255).view(1, 3, 1, 1), False)

    @classmethod
    def for_model(cls, model: nn.Module, channels_last: bool = False) -> Normalize:
        mean, std = model_mean_std(model)
        return cls(mean, std, channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        x = (x - self.shift) / self.scale
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
