"""The epoch plan: which (sample, repeat) fills each slot of an epoch.

A pure function of (seed, epoch, num_samples, repeats). See docs/determinism.md for the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kdcache.views.rng import Domain, keyed_generator


@dataclass(frozen=True)
class EpochPlan:
    """Slot s of the epoch shows repeat ``repeats[s]`` of sample ``sample_ids[s]``.

    Slots (2i, 2i+1) form mixing pair i. The number of slots is even: for an odd dataset size the
    last slot of the truncated sequence is dropped, so every slot has a partner.
    """

    seed: int
    epoch: int
    num_samples: int
    repeats_per_sample: int
    sample_ids: np.ndarray  # int64 (num_slots,)
    repeats: np.ndarray  # uint8 (num_slots,)

    @property
    def num_slots(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def num_pairs(self) -> int:
        return self.num_slots // 2

    def pair_slots(self, pair: int) -> tuple[int, int]:
        if not 0 <= pair < self.num_pairs:
            raise IndexError(f"pair {pair} out of range for an epoch of {self.num_pairs} pairs")
        return 2 * pair, 2 * pair + 1


def num_slots_for(num_samples: int) -> int:
    """Slots per epoch: the dataset size rounded down to even (each slot needs a partner)."""
    return num_samples - (num_samples % 2)


def make_epoch_plan(seed: int, epoch: int, num_samples: int, repeats: int) -> EpochPlan:
    """Lay out one epoch.

    1. A permutation of the samples selects ceil(N/R) of them.
    2. They are taken in chunks of 2R; each chunk emits R rounds, each round a fresh permutation of
       the chunk with repeat index = round. A sample's R views therefore sit within 2R^2 slots of
       each other (the same global batch, as timm's repeated-augmentation sampler gives under DDP),
       while its mixing partner changes from round to round.
    3. The sequence is truncated to N slots (then to an even count), and any pair that holds the same
       sample twice (only possible in the short last chunk) swaps its second slot with a nearby pair.
    """
    if num_samples < 2:
        raise ValueError(f"an epoch needs at least 2 samples to form a mixing pair, got {num_samples}")
    if not 1 <= repeats <= 255:
        raise ValueError(f"repeats must be in 1..255, got {repeats}")
    ids, reps = _layout(seed, epoch, num_samples, repeats)
    ids.setflags(write=False)
    reps.setflags(write=False)
    return EpochPlan(seed, epoch, num_samples, repeats, ids, reps)


@lru_cache(maxsize=8)
def _layout_cached(seed: int, epoch: int, num_samples: int, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    return _compute_layout(seed, epoch, num_samples, repeats)


def _layout(seed: int, epoch: int, num_samples: int, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    ids, reps = _layout_cached(seed, epoch, num_samples, repeats)
    return ids.copy(), reps.copy()


def _compute_layout(seed: int, epoch: int, n: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    g = keyed_generator(seed, Domain.PLAN, epoch)
    m = math.ceil(n / r)
    selected = g.permutation(n)[:m].astype(np.int64)
    chunk = 2 * r
    n_full = m // chunk
    parts_ids: list[np.ndarray] = []
    parts_reps: list[np.ndarray] = []
    if n_full:
        members = selected[: n_full * chunk].reshape(n_full, 1, chunk)
        # One independent permutation per (chunk, round), vectorised via argsort of uniforms.
        order = np.argsort(g.random((n_full, r, chunk)), axis=-1, kind="stable")
        ids = np.take_along_axis(np.broadcast_to(members, (n_full, r, chunk)), order, axis=-1)
        reps = np.broadcast_to(np.arange(r, dtype=np.uint8)[None, :, None], (n_full, r, chunk))
        parts_ids.append(ids.reshape(-1))
        parts_reps.append(reps.reshape(-1))
    tail = selected[n_full * chunk :]
    if tail.size:
        for round_ in range(r):
            parts_ids.append(g.permutation(tail))
            parts_reps.append(np.full(tail.size, round_, dtype=np.uint8))
    ids = np.concatenate(parts_ids)[: num_slots_for(n)].copy()
    reps = np.concatenate(parts_reps)[: num_slots_for(n)].copy()
    _separate_pairs(ids, reps)
    return ids, reps


def _separate_pairs(ids: np.ndarray, reps: np.ndarray) -> None:
    """Swap second slots so no pair holds one sample twice, where some other pair allows it."""
    a, b = ids[0::2], ids[1::2]
    bad = np.flatnonzero(a == b)
    num_pairs = a.size
    for i in bad:
        x = ids[2 * i]
        if ids[2 * i + 1] != x:  # an earlier swap already fixed it
            continue
        # Nearest pairs first, backwards then forwards, to keep repeats close together.
        for j in _nearest(i, num_pairs):
            if ids[2 * j] != x and ids[2 * j + 1] != x:
                s, t = 2 * i + 1, 2 * j + 1
                ids[s], ids[t] = ids[t], ids[s]
                reps[s], reps[t] = reps[t], reps[s]
                break


def _nearest(i: int, n: int):
    for d in range(1, n):
        if i - d >= 0:
            yield i - d
        if i + d < n:
            yield i + d


def cycle_pair_order(seed: int, epoch: int, cycle: int, num_pairs: int) -> np.ndarray:
    """The order in which a student replays the pairs of cached epoch ``epoch`` in its ``cycle``-th pass
    through the cache: the plan's own order for cycle 0, a fresh permutation keyed by (seed, epoch,
    cycle) after that. Whole pairs move, each keeping its stored params, digests and soft labels."""
    if cycle == 0:
        return np.arange(num_pairs, dtype=np.int64)
    return keyed_generator(seed, Domain.CYCLE, epoch, cycle).permutation(num_pairs).astype(np.int64)
