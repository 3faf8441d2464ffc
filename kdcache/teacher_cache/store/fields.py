"""The per-view arrays of a cache (one row per view, in slot order) and their validated containers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Canonical order: storage, content digest and tar member order all follow it.
FIELDS: tuple[str, ...] = ("sample_id", "repeat", "params", "digest", "topk_logprob", "topk_class")
MAX_INT16_CLASSES = 32767


def class_dtype(num_classes: int) -> np.dtype:
    """int16 class ids while they fit, else int32."""
    return np.dtype(np.int16) if num_classes <= MAX_INT16_CLASSES else np.dtype(np.int32)


def field_layout(record_width: int, topk: int, num_classes: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """name -> (dtype, shape of one row)."""
    return {
        "sample_id": (np.dtype(np.int32), ()),
        "repeat": (np.dtype(np.uint8), ()),
        "params": (np.dtype(np.uint16), (record_width,)),
        "digest": (np.dtype(np.uint64), ()),
        "topk_logprob": (np.dtype(np.float16), (topk,)),
        "topk_class": (class_dtype(num_classes), (topk,)),
    }


@dataclass(frozen=True, eq=False)  # == on arrays is ambiguous; use equals()
class UnitData:
    """Rows of consecutive slots: the arrays of one work unit (or any slot range)."""

    sample_id: np.ndarray  # int32 (V,)
    repeat: np.ndarray  # uint8 (V,)
    params: np.ndarray  # uint16 (V, record_width)
    digest: np.ndarray  # uint64 (V,)
    topk_logprob: np.ndarray  # float16 (V, k), sorted descending per row (k + tail in format 2, decoded)
    topk_class: np.ndarray  # int16 or int32 (V, k) (k + tail)

    def __post_init__(self) -> None:
        arrays = self.arrays()
        bad = [n for n, a in arrays.items() if not isinstance(a, np.ndarray)]
        if bad:
            raise TypeError(f"UnitData fields must be numpy arrays: {', '.join(bad)}")
        n = self.sample_id.shape[0] if self.sample_id.ndim else -1
        width = self.params.shape[-1] if self.params.ndim else 0
        k = self.topk_logprob.shape[-1] if self.topk_logprob.ndim else 0
        layout = field_layout(width, k, 2)
        for name, a in arrays.items():
            dtype, row = layout[name]
            allowed = (np.dtype(np.int16), np.dtype(np.int32)) if name == "topk_class" else (dtype,)
            if a.dtype not in allowed or not a.dtype.isnative:
                names = " or ".join(d.name for d in allowed)
                raise TypeError(f"UnitData.{name} has dtype {a.dtype}, expected native {names}")
            if a.shape != (n, *row):
                raise ValueError(f"UnitData.{name} has shape {a.shape}, expected {(n, *row)}")

    @property
    def num_views(self) -> int:
        return int(self.sample_id.shape[0])

    @property
    def topk(self) -> int:
        return int(self.topk_logprob.shape[1])

    @property
    def record_width(self) -> int:
        return int(self.params.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELDS}

    def rows(self, start: int, stop: int) -> UnitData:
        return UnitData(**{n: a[start:stop] for n, a in self.arrays().items()})

    def equals(self, other: UnitData) -> bool:
        """Bitwise equality of every array (NaN-safe, unlike ==)."""
        a, b = self.arrays(), other.arrays()
        return all(
            a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and a[n].tobytes() == b[n].tobytes() for n in FIELDS
        )

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> UnitData:
        return cls(**{n: arrays[n] for n in FIELDS})

    @classmethod
    def concat(cls, parts: list[UnitData]) -> UnitData:
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in FIELDS})


@dataclass(frozen=True, eq=False)
class EpochBlock(UnitData):
    """All rows of one epoch in memory, row s = slot s. Index it directly: no store call per sample."""

    epoch: int = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.epoch, int) or self.epoch < 0:
            raise ValueError(f"EpochBlock.epoch must be a non-negative int, got {self.epoch!r}")

    def rows(self, start: int, stop: int) -> UnitData:
        return UnitData(**{n: getattr(self, n)[start:stop] for n in FIELDS})
