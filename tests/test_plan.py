"""The epoch plan: a pure function of (seed, epoch, N, R) with repeated augmentation and pairs."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcache.views import make_epoch_plan
from kdcache.views.plan import num_slots_for

plan_args = st.tuples(
    st.integers(0, 2**32 - 1),  # seed (one 32-bit word)
    st.integers(0, 1000),  # epoch
    st.integers(2, 200),  # N
    st.integers(1, 4),  # R
)


def test_plan_is_pure():
    a = make_epoch_plan(7, 3, 101, 3)
    b = make_epoch_plan(7, 3, 101, 3)
    assert a.sample_ids is not b.sample_ids
    np.testing.assert_array_equal(a.sample_ids, b.sample_ids)
    np.testing.assert_array_equal(a.repeats, b.repeats)
    assert a.sample_ids.dtype == np.int64 and a.repeats.dtype == np.uint8


def test_plan_arrays_are_read_only_and_not_shared():
    p = make_epoch_plan(1, 0, 50, 2)
    with pytest.raises(ValueError):
        p.sample_ids[0] = 0
    copy = p.sample_ids.copy()
    copy[:] = 0
    np.testing.assert_array_equal(make_epoch_plan(1, 0, 50, 2).sample_ids, p.sample_ids)


@pytest.mark.parametrize("change", [{"epoch": 4}, {"seed": 8}])
def test_other_epoch_or_seed_gives_other_plan(change):
    base = {"seed": 7, "epoch": 3, "num_samples": 101, "repeats": 3}
    a = make_epoch_plan(**base)
    b = make_epoch_plan(**{**base, **change})
    assert not np.array_equal(a.sample_ids, b.sample_ids)


def test_epochs_select_different_samples():
    """With R=3 each epoch shows a third of the data; over epochs every sample gets its turn."""
    seen = set()
    for epoch in range(12):
        seen |= set(make_epoch_plan(0, epoch, 60, 3).sample_ids.tolist())
    assert seen == set(range(60))


def _check_plan(seed: int, epoch: int, n: int, r: int) -> None:
    p = make_epoch_plan(seed, epoch, n, r)
    ids, reps = p.sample_ids, p.repeats
    # Slots: N rounded down to even; odd N drops exactly one slot.
    assert p.num_slots == n - n % 2 == num_slots_for(n)
    assert p.num_pairs == p.num_slots // 2
    assert ids.shape == reps.shape == (p.num_slots,)
    assert ids.min() >= 0 and ids.max() < n

    # ceil(N/R) samples are selected; each appears R times except those cut off at the end.
    m = math.ceil(n / r)
    counts = Counter(ids.tolist())
    assert all(c <= r for c in counts.values())
    assert len(counts) in (m, m - 1)  # m - 1 only if truncation removed the whole last sample
    missing = r * (m - len(counts)) + sum(r - c for c in counts.values())
    assert missing == r * m - p.num_slots  # all shortfall is truncation, nothing else
    assert r * m - p.num_slots <= r  # truncation cuts less than one sample's worth (+1 odd slot)

    # Repeat indices of one sample are distinct, and are 0..c-1 (truncation drops the last rounds).
    per_sample = defaultdict(list)
    for i, k in zip(ids.tolist(), reps.tolist(), strict=True):
        per_sample[i].append(k)
    for i, ks in per_sample.items():
        assert sorted(ks) == list(range(counts[i])), (i, ks)

    # No pair holds one sample twice unless unavoidable (the sample fills more than num_pairs slots).
    for a, b in zip(ids[0::2].tolist(), ids[1::2].tolist(), strict=True):
        if a == b:
            assert counts[a] > p.num_pairs, f"pair ({a}, {a}) avoidable: {counts[a]} views, {p.num_pairs} pairs"


@settings(max_examples=200, deadline=None)
@given(plan_args)
def test_plan_invariants(args):
    _check_plan(*args)


@pytest.mark.parametrize(
    ("n", "r"),
    [(2, 1), (2, 3), (3, 1), (3, 2), (5, 4), (7, 3), (9, 2), (13, 3), (99, 3), (100, 3), (101, 4), (1001, 3)],
)
def test_plan_invariants_edge_sizes(n, r):
    for epoch in range(3):
        _check_plan(11, epoch, n, r)


def test_odd_n_drops_the_last_slot():
    for r in (1, 2, 3):
        odd, even = make_epoch_plan(0, 0, 21, r), make_epoch_plan(0, 0, 20, r)
        assert odd.num_slots == 20 == even.num_slots
    # With R=1 every sample but one is shown once: the dropped slot is one sample.
    p = make_epoch_plan(0, 0, 21, 1)
    assert len(set(p.sample_ids.tolist())) == 20


def test_repeats_stay_close_together():
    """Repeated views of a sample sit within 2R^2 slots (the same global batch under DDP)."""
    r = 3
    p = make_epoch_plan(5, 0, 3000, r)
    pos = defaultdict(list)
    for s, i in enumerate(p.sample_ids.tolist()):
        pos[i].append(s)
    spread = max(max(v) - min(v) for v in pos.values())
    assert spread < 2 * r * r


def test_partners_are_redrawn_every_round():
    """Each round re-permutes the chunk of 2R samples, so a sample's partner is drawn afresh each
    round, uniformly among the 2R - 1 others: E[#distinct partners] = (2R-1)(1 - ((2R-2)/(2R-1))^R)."""
    r = 3
    p = make_epoch_plan(5, 0, 6000, r)
    partners = defaultdict(list)
    for a, b in zip(p.sample_ids[0::2].tolist(), p.sample_ids[1::2].tolist(), strict=True):
        partners[a].append(b)
        partners[b].append(a)
    full = [len(set(v)) for v in partners.values() if len(v) == r]
    expected = (2 * r - 1) * (1 - ((2 * r - 2) / (2 * r - 1)) ** r)  # 2.44 for R=3
    assert abs(np.mean(full) - expected) < 0.05


@pytest.mark.parametrize("n", [-1, 0, 1])
def test_fewer_than_two_samples_raise(n):
    with pytest.raises(ValueError, match="at least 2 samples"):
        make_epoch_plan(0, 0, n, 3)


@pytest.mark.parametrize("r", [0, 256, -1])
def test_bad_repeats_raise(r):
    with pytest.raises(ValueError, match="repeats"):
        make_epoch_plan(0, 0, 10, r)


def test_negative_seed_or_epoch_raise():
    with pytest.raises(ValueError):
        make_epoch_plan(-1, 0, 10, 3)
    with pytest.raises(ValueError):
        make_epoch_plan(0, -1, 10, 3)


def test_pair_slots():
    p = make_epoch_plan(0, 0, 11, 3)
    assert p.pair_slots(0) == (0, 1)
    assert p.pair_slots(4) == (8, 9)
    with pytest.raises(IndexError):
        p.pair_slots(5)
    with pytest.raises(IndexError):
        p.pair_slots(-1)
