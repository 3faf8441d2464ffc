"""The build's schedule: every (epoch, unit) in order, each rank's share, and each unit cut into batches.

Rank r of W builds units r::W of the (epoch, unit) list; batches never straddle a unit and start at
its first slot, so a unit's teacher inputs are the same whichever rank renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
