"""The teacher callable of online mode: uint8 NHWC views on the device -> logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from kdcache.models.normalize import Normalize


class Teacher(Protocol):
    """Anything that maps a uint8 (B, H, W, 3) batch on the training device to (B, C) logits."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class OnlineTeacher:
    """A frozen model in eval mode with its own normalisation (and optional autocast dtype).

    Runs under ``no_grad`` rather than ``inference_mode``: the KD loss multiplies the teacher's
    probabilities into a graph that needs gradients, and inference tensors cannot be saved for it.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = False,
        amp_dtype: torch.dtype | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        device = next(model.parameters()).device
        norm = Normalize.for_model(model, channels_last) if mean is None or std is None else None
        self.normalize = (norm or Normalize(mean, std, channels_last)).to(device)  # type: ignore[arg-type]
        self.amp_dtype = amp_dtype
        self.device_type = device.type

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        with torch.autocast(
            self.device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            return self.model(x).float()
