"""The build's lazy schedule (schedule.BatchSchedule) gives exactly the batches of the eager one
(schedule.unit_batches) it replaced, for any unit size, batch size, world size and set of committed units,
and its memory does not grow with the views per unit."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest

from kdcache.teacher_cache.teacher_pass.schedule import BatchSchedule, Unit, all_units, assign, unit_batches


def _pending(epochs: int, num_slots: int, unit_size: int, rank: int, world: int, committed: set) -> list[Unit]:
    """This rank's units that run_build hands to run_units: its share, less the committed ones."""
    mine = assign(all_units(epochs, num_slots, unit_size), rank, world)
    return [u for u in mine if (u.epoch, u.index) not in committed]


def _eager(units: list[Unit], batch_size: int) -> list[tuple[int, np.ndarray, Unit]]:
    """What run_units fed its DataLoader before the schedule was lazy: (epoch, pairs) per batch, and the
    unit each batch belongs to (items -> unit map)."""
    items, batches = unit_batches(units, batch_size)
    unit_of_item = np.repeat(np.arange(len(units)), [u.size // 2 for u in units])
    return [(int(items[b[0], 0]), items[b, 1], units[int(unit_of_item[b[0]])]) for b in batches]


def _committed(epochs: int, per_epoch: int, kind: str, seed: int) -> set[tuple[int, int]]:
    every = [(e, u) for e in range(epochs) for u in range(per_epoch)]
    if kind == "none":
        return set()
    if kind == "all":
        return set(every)
    if kind == "first epoch":
        return {(0, u) for u in range(per_epoch)}
    g = np.random.default_rng(seed)  # "random": a resumed build's scattered commits
    return {every[i] for i in g.choice(len(every), size=len(every) // 3, replace=False)}


SIZES = [  # (num_slots, unit_size, batch_size): units of one pair, units not a multiple of the batch, one
    # unit per epoch, a last unit shorter than the rest, batches larger than a unit
    (num_slots, unit_size, batch_size)
    for num_slots in (26, 100, 1002)
    for unit_size in (2, 6, 64, 10240)
    for batch_size in (2, 4, 10, 128)
]


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("kind", ["none", "random", "first epoch", "all"])
def test_lazy_batches_equal_the_eager_ones(world, kind):
    epochs = 3
    for num_slots, unit_size, batch_size in SIZES:
        unit_size = min(unit_size, num_slots)
        per_epoch = -(-num_slots // unit_size)
        committed = _committed(epochs, per_epoch, kind, seed=num_slots * unit_size + batch_size + world)
        for rank in range(world):
            units = _pending(epochs, num_slots, unit_size, rank, world, committed)
            want = _eager(units, batch_size)
            lazy = BatchSchedule(units, batch_size)
            where = (num_slots, unit_size, batch_size, rank)
            assert len(lazy) == len(want), where
            assert lazy.views == sum(u.size for u in units) == 2 * sum(len(p) for _, p, _ in want), where
            for i, (epoch, pairs, unit) in enumerate(want):
                got_epoch, got_pairs = lazy[i]
                assert got_epoch == epoch, (where, i)
                assert got_pairs.dtype == pairs.dtype and np.array_equal(got_pairs, pairs), (where, i)
                assert units[lazy.unit_position(i)] == unit == lazy.unit(lazy.unit_position(i)), (where, i)
            # by_unit: the same batches grouped per unit, units in order
            regrouped = [(u, p) for u, ps in lazy.by_unit() for p in ps]
            assert [u for u, _ in regrouped] == [u for _, _, u in want], where
            assert all(np.array_equal(p, w) for (_, p), (_, w, _) in zip(regrouped, want, strict=True)), where


def test_iteration_negative_index_slices_and_bounds():
    units = all_units(2, 26, 6)
    lazy = BatchSchedule(units, 4)
    eager = _eager(units, 4)
    assert [e for e, _ in lazy] == [e for e, _, _ in eager]  # Sequence iteration stops at the end
    assert np.array_equal(lazy[-1][1], eager[-1][1])
    assert [p.tolist() for _, p in lazy[2:5]] == [p.tolist() for _, p, _ in eager[2:5]]
    for bad in (len(lazy), -len(lazy) - 1):
        with pytest.raises(IndexError):
            lazy[bad]
    assert len(BatchSchedule([], 4)) == 0
    with pytest.raises(ValueError, match="even"):
        BatchSchedule(units, 3)


def test_survives_pickling_for_dataloader_workers():
    units = all_units(2, 100, 10)
    lazy = BatchSchedule(units, 6)
    again = pickle.loads(pickle.dumps(lazy))
    assert len(again) == len(lazy)
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(again, lazy, strict=True))


def _traced(build) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = build()
        used = tracemalloc.get_traced_memory()[0] - before
        del held
    finally:
        tracemalloc.stop()
    return used


def test_memory_is_per_unit_not_per_view():
    """The same number of units, 1,000x the views each: the lazy schedule's size does not move, the eager
    one's grows with the views (bytes, not time: deterministic)."""
    small = all_units(1, 2 * 64, 2)  # 64 units of 2 views
    large = all_units(1, 2000 * 64, 2000)  # 64 units of 2,000 views
    lazy_small = _traced(lambda: BatchSchedule(small, 8))
    lazy_large = _traced(lambda: BatchSchedule(large, 8))
    assert lazy_large <= lazy_small + 1024
    assert _traced(lambda: unit_batches(large, 8)) > 100 * lazy_large
