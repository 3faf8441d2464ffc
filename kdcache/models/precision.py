"""Autocast precision by name: the one table the build, the trainer and the online teacher share."""

from __future__ import annotations

import torch

AMP_CHOICES = ("off", "bf16", "fp16")
_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of ``off`` / ``bf16`` / ``fp16`` (None: full precision)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {name!r}") from None
