"""Coverage of cached epochs, checked against an independent count over (epoch, slot) keys."""

from __future__ import annotations

import pytest

from kdcache.views import coverage as C
from kdcache.views.plan import make_epoch_plan


def _brute(seed: int, epochs: list[int], n: int, r: int) -> tuple[int, float]:
    views: dict[int, set[tuple[int, int]]] = {}
    for e in epochs:
        p = make_epoch_plan(seed, e, n, r)
        for sid, rep in zip(p.sample_ids.tolist(), p.repeats.tolist(), strict=True):
            views.setdefault(sid, set()).add((e, rep))
    seen = len(views)
    return seen, sum(len(v) for v in views.values()) / seen


@pytest.mark.parametrize(("n", "r", "epochs"), [(101, 3, [0]), (100, 3, [0, 1, 2]), (57, 2, [0, 3, 5]), (40, 1, [0])])
def test_coverage_matches_a_brute_force_count(n, r, epochs):
    cov = C.coverage(7, epochs, n, r)
    seen, per = _brute(7, epochs, n, r)
    assert cov.exact and cov.samples_seen == seen
    assert cov.views_per_sample == pytest.approx(per)
    if r == 1:
        assert cov.share_seen == pytest.approx((n - n % 2) / n)


def test_one_epoch_of_repeats_three_shows_a_third():
    cov = C.coverage(0, [0], 3000, 3)
    assert cov.samples_seen == 1000 and cov.views_per_sample == pytest.approx(3.0)


def test_many_epochs_are_estimated_and_say_so(monkeypatch):
    monkeypatch.setattr(C, "MAX_EXACT_EPOCHS", 3)
    est = C.coverage(1, range(6), 3000, 3)
    monkeypatch.setattr(C, "MAX_EXACT_EPOCHS", 32)
    exact = C.coverage(1, range(6), 3000, 3)
    assert not est.exact and exact.exact
    assert "estimated" in est.describe() and "estimated" not in exact.describe()
    assert abs(est.share_seen - exact.share_seen) < 0.03  # 1 - (2/3)^6 = 0.912 either way
