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


# ---- the teacher's precision, as recorded in a cache's manifest (teacher.precision) -------------------
FP32 = "fp32"
_HEAD = "+fp32-head"
_NAMES: dict[torch.dtype, str] = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def has_split_head(model: torch.nn.Module) -> bool:
    """timm models split into ``forward_features`` and ``forward_head``: the head can run in fp32."""
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def precision_name(dtype: torch.dtype | None, fp32_head: bool) -> str:
    """'fp32', 'fp16-autocast', 'bf16-autocast+fp32-head', ...: the manifest's teacher.precision."""
    if dtype is None:
        return FP32
    return f"{_NAMES[dtype]}-autocast" + (_HEAD if fp32_head else "")


def parse_precision(name: str) -> tuple[torch.dtype | None, bool]:
    """Inverse of :func:`precision_name`: (autocast dtype or None, head in fp32)."""
    if name == FP32:
        return None, False
    base, head = (name[: -len(_HEAD)], True) if name.endswith(_HEAD) else (name, False)
    for dtype, short in _NAMES.items():
        if base == f"{short}-autocast":
            return dtype, head
    raise ValueError(f"unknown teacher precision {name!r}")


class TeacherForward(torch.nn.Module):
    """The teacher's forward at a precision: the body under autocast, the classifier head outside it
    on fp32 features (``fp32_head``), fp32 logits out. Rounding the logits to bf16 alone costs ~5e-3 L1
    on the probabilities (benchmarks/teacher_precision.py); an fp32 head on fp16 features keeps it ~1e-3.
    One module so that ``torch.compile`` sees the autocast regions too."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None, fp32_head: bool, device_type: str):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.fp32_head = fp32_head and dtype is not None and has_split_head(model)
        self.device_type = device_type

    @property
    def precision(self) -> str:
        return precision_name(self.dtype, self.fp32_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.model(x).float()
        with torch.autocast(self.device_type, dtype=self.dtype):
            if not self.fp32_head:
                return self.model(x).float()
            features = self.model.forward_features(x)
        return self.model.forward_head(features.float()).float()
