"""Work units: the slots of an epoch cut into fixed runs; each unit is written whole by one process.

Rank r of W builds units r::W of the (epoch, unit) list; batches never straddle a unit and start at
its first slot, so a unit's teacher inputs are the same whichever rank renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdcache.teacher_cache.fields import UnitData, field_layout
from kdcache.teacher_cache.manifest import Manifest


def num_units(manifest: Manifest) -> int:
    """Units per epoch; the last one may be shorter."""
    return -(-manifest.num_slots // manifest.unit_size)


def unit_slots(manifest: Manifest, unit: int) -> tuple[int, int]:
    """Half-open slot range [a, b) of unit ``unit`` (the same in every epoch)."""
    if not 0 <= unit < num_units(manifest):
        raise IndexError(f"unit {unit} out of range: an epoch has {num_units(manifest)} units")
    a = unit * manifest.unit_size
    return a, min(a + manifest.unit_size, manifest.num_slots)


def check_unit_id(manifest: Manifest, epoch: int, unit: int) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    unit_slots(manifest, int(unit))


def check_unit_data(manifest: Manifest, unit: int, data: UnitData) -> None:
    """Reject data that does not fit the manifest: wrong shape/dtype or values no build could produce."""
    a, b = unit_slots(manifest, unit)
    layout = field_layout(manifest.record_width, manifest.topk, manifest.num_classes)
    for name, arr in data.arrays().items():
        dtype, row = layout[name]
        if arr.dtype != dtype or arr.shape != (b - a, *row):
            raise ValueError(
                f"unit {unit}: {name} is {arr.dtype}{list(arr.shape)}, expected {dtype}{[b - a, *row]} "
                f"(slots {a}..{b - 1}, k={manifest.topk}, record width {manifest.record_width})"
            )
    n, r, c = manifest.dataset["num_samples"], manifest.repeats, manifest.num_classes
    _in_range(unit, "sample_id", data.sample_id, 0, n)
    _in_range(unit, "repeat", data.repeat, 0, r)
    _in_range(unit, "topk_class", data.topk_class, 0, c)
    lp = data.topk_logprob.astype(np.float32)
    if np.isnan(lp).any() or (lp > 1e-3).any():
        raise ValueError(f"unit {unit}: topk_logprob must be log-probabilities (<= 0, no NaN)")
    if (np.diff(lp, axis=1) > 0).any():
        raise ValueError(f"unit {unit}: topk_logprob rows must be sorted in descending order")
    if data.topk > 1 and (np.diff(np.sort(data.topk_class, axis=1), axis=1) == 0).any():
        raise ValueError(f"unit {unit}: a row of topk_class names the same class twice")


def _in_range(unit: int, name: str, arr: np.ndarray, lo: int, hi: int) -> None:
    if arr.size and (int(arr.min()) < lo or int(arr.max()) >= hi):
        raise ValueError(f"unit {unit}: {name} values must lie in {lo}..{hi - 1}, got {arr.min()}..{arr.max()}")


@dataclass(frozen=True)
class Unit:
    """Unit ``index`` of epoch ``epoch``: slots [start, start + size)."""

    epoch: int
    index: int
    start: int
    size: int


def all_units(epochs: int, num_slots: int, unit_size: int) -> list[Unit]:
    """Every unit of epochs 0..epochs-1, in (epoch, unit) order."""
    if unit_size < 2 or unit_size % 2 or num_slots % 2:
        raise ValueError(f"unit_size ({unit_size}) and num_slots ({num_slots}) must be even, unit_size >= 2")
    n = -(-num_slots // unit_size)
    return [
        Unit(e, u, u * unit_size, min(unit_size, num_slots - u * unit_size)) for e in range(epochs) for u in range(n)
    ]


def assign(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    """This rank's share: units rank::world_size."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return units[rank::world_size]


def unit_batches(units: list[Unit], batch_size: int) -> tuple[np.ndarray, list[list[int]]]:
    """(items, batches): items[i] = (epoch, pair) unit by unit; each batch lists item indices of
    at most batch_size // 2 pairs of ONE unit, cut from the unit's first pair."""
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"batch_size must be even and >= 2, got {batch_size}")
    per_batch = batch_size // 2
    items: list[np.ndarray] = []
    batches: list[list[int]] = []
    offset = 0
    for u in units:
        pairs = np.arange(u.start // 2, (u.start + u.size) // 2, dtype=np.int64)
        items.append(np.stack([np.full_like(pairs, u.epoch), pairs], axis=1))
        for a in range(0, len(pairs), per_batch):
            batches.append(list(range(offset + a, offset + min(a + per_batch, len(pairs)))))
        offset += len(pairs)
    return (np.concatenate(items) if items else np.zeros((0, 2), np.int64)), batches
