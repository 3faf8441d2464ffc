"""The build's schedule: every (epoch, unit) in order, each rank's share, and each unit cut into batches.

Rank r of W builds units r::W of the (epoch, unit) list; batches never straddle a unit and start at
its first slot, so a unit's teacher inputs are the same whichever rank renders it.

A rank's batches are computed on demand (:class:`BatchSchedule`): the schedule holds a few integers per
unit, never a row per view, so its memory does not grow with --epochs beyond the unit list itself
(docs/scale.md, "RAM"). :func:`unit_batches` is the eager form, kept as the reference the lazy one is
tested against (tests/test_schedule_lazy.py) and for benchmarks that render a whole schedule up front.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np


@dataclass(frozen=True, slots=True)  # slots: a 610-epoch ImageNet build holds 76,860 of them
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


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"batch_size must be even and >= 2, got {batch_size}")


def unit_batches(units: list[Unit], batch_size: int) -> tuple[np.ndarray, list[list[int]]]:
    """(items, batches): items[i] = (epoch, pair) unit by unit; each batch lists item indices of
    at most batch_size // 2 pairs of ONE unit, cut from the unit's first pair. Eager: 28-36 B per view
    (see :class:`BatchSchedule` for what the build uses)."""
    _check_batch_size(batch_size)
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


class BatchSchedule(Sequence[tuple[int, np.ndarray]]):
    """The batches of ``units`` in order, each computed when asked for: item i is batch i's (epoch,
    pairs), exactly what ``unit_batches`` lays out (at most batch_size // 2 pairs of one unit, cut from
    the unit's first pair). Holds five integers per unit; a DataLoader over it (map-style, sequential
    sampler) prefetches across unit boundaries as over any index range."""

    def __init__(self, units: Sequence[Unit], batch_size: int):
        _check_batch_size(batch_size)
        self.per_batch = batch_size // 2
        n = len(units)
        self._epoch = np.fromiter((u.epoch for u in units), np.int64, n)
        self._index = np.fromiter((u.index for u in units), np.int64, n)
        self._start = np.fromiter((u.start for u in units), np.int64, n)
        self._size = np.fromiter((u.size for u in units), np.int64, n)
        per_unit = -(-(self._size // 2) // self.per_batch)  # batches of each unit
        self._first = np.zeros(n + 1, np.int64)  # batch i belongs to unit p when first[p] <= i < first[p + 1]
        np.cumsum(per_unit, out=self._first[1:])

    def __len__(self) -> int:
        return int(self._first[-1])

    @property
    def num_units(self) -> int:
        return len(self._size)

    @property
    def views(self) -> int:
        return int(self._size.sum())

    def unit(self, position: int) -> Unit:
        """The ``position``-th unit of the schedule."""
        p = position
        return Unit(int(self._epoch[p]), int(self._index[p]), int(self._start[p]), int(self._size[p]))

    def unit_position(self, i: int) -> int:
        """Position (in ``units``) of the unit batch ``i`` belongs to."""
        return int(np.searchsorted(self._first, self._check(i), side="right")) - 1

    def _check(self, i: int) -> int:
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"batch {i} outside a schedule of {n}")
        return j

    @overload
    def __getitem__(self, i: int) -> tuple[int, np.ndarray]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, np.ndarray]]: ...
    def __getitem__(self, i: int | slice) -> tuple[int, np.ndarray] | list[tuple[int, np.ndarray]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = self._check(i)
        p = int(np.searchsorted(self._first, j, side="right")) - 1
        first_pair = int(self._start[p]) // 2 + (j - int(self._first[p])) * self.per_batch
        end_pair = (int(self._start[p]) + int(self._size[p])) // 2
        return int(self._epoch[p]), np.arange(first_pair, min(first_pair + self.per_batch, end_pair), dtype=np.int64)

    def by_unit(self) -> Iterator[tuple[Unit, list[np.ndarray]]]:
        """(unit, its batches' pairs) one unit at a time."""
        for p in range(self.num_units):
            yield self.unit(p), [self[j][1] for j in range(int(self._first[p]), int(self._first[p + 1]))]
