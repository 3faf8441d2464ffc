"""Batch results collected into whole work units, in slot order, for the writer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdcache.teacher_cache.teacher_pass.schedule import Unit


@dataclass
class _Buffer:
    unit: Unit
    filled: int
    arrays: dict[str, np.ndarray]


class UnitAssembler:
    """Collects batch results into whole units; returns a unit's arrays once every row is in."""

    def __init__(self, k: int, record_width: int, class_dtype: np.dtype):
        self.k, self.width, self.class_dtype = k, record_width, class_dtype
        self.open: dict[tuple[int, int], _Buffer] = {}

    def add(self, unit: Unit, batch: dict, lp: np.ndarray, cls: np.ndarray) -> dict[str, np.ndarray] | None:
        key = (unit.epoch, unit.index)
        buf = self.open.get(key)
        if buf is None:
            n = unit.size
            buf = self.open[key] = _Buffer(
                unit,
                0,
                {
                    "sample_id": np.zeros(n, np.int32),
                    "repeat": np.zeros(n, np.uint8),
                    "params": np.zeros((n, self.width), np.uint16),
                    "digest": np.zeros(n, np.uint64),
                    "topk_logprob": np.zeros((n, self.k), np.float16),
                    "topk_class": np.zeros((n, self.k), self.class_dtype),
                },
            )
        rows = np.asarray(batch["slots"]) - unit.start
        a = buf.arrays
        a["sample_id"][rows] = batch["sample_ids"]
        a["repeat"][rows] = batch["repeats"]
        a["params"][rows] = batch["records"]
        a["digest"][rows] = batch["digests"]
        a["topk_logprob"][rows] = lp
        a["topk_class"][rows] = cls
        buf.filled += len(rows)
        if buf.filled == unit.size:
            del self.open[key]
            return buf.arrays
        return None
