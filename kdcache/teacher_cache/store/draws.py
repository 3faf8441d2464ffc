"""Format 3's soft labels: an exact top-k plus M systematic draws from the rest of the teacher's
distribution (docs/cache-format.md, "Format version 3: draws").

Per view the build keeps the k most probable classes exactly, as in format 1, and replaces the rest of
the distribution (mass r = 1 - top-k mass, spread over C - k classes) by M classes drawn from it:

- one uniform u in [0, 1) per view, from a keyed generator (seed, epoch, slot): a rebuild, a resume
  or another world size draws the same u;
- the M points r (u + j) / M, j = 0 .. M-1, on the cumulative distribution of the rest, classes in id
  order (systematic sampling: lower variance than M independent draws, and still unbiased);
- the class under each point, stored as a sorted multiset (a class drawn twice appears twice).

The target rebuilt from a view is the exact top-k probabilities plus r/M on each drawn class
(``count / M`` of the rest mass). Its expectation over u is the teacher's distribution exactly: a class
of rest probability p is hit floor(M p / r) or ceil(M p / r) times, with mean M p / r. Training averages
the per-view noise away over views and epochs, as it averages augmentation.

In memory (``UnitData``) a format 3 view is a row of width k + M: the k exact fp16 log-probs, then M
columns of the drawn classes, each holding the same value log(r / M) as float16 (rounded up, so the
row's mass is never short of 1 and :func:`~kdcache.teacher_cache.store.topk.topk_to_probs` spreads
nothing), with a class drawn n times holding n columns. The value is a function of the stored top-k, so
only the class ids are stored.
"""

from __future__ import annotations

import numpy as np

from kdcache.views.rng import Domain, keyed_generator

# Uniforms come in blocks of this many slots from one keyed generator: one generator per batch rather
# than per view (a Philox set-up costs ~20 us), and still keyed by slot, not by batch, unit or rank.
DRAW_BLOCK = 1024


def draw_uniforms(seed: int, epoch: int, slots: np.ndarray) -> np.ndarray:
    """The offset u in [0, 1) of each view (float64, one per slot): a pure function of (seed, epoch, slot)."""
    slots = np.asarray(slots, dtype=np.int64)
    out = np.empty(slots.shape, dtype=np.float64)
    blocks = slots // DRAW_BLOCK
    for b in np.unique(blocks):
        u = keyed_generator(seed, Domain.LABEL_DRAWS, epoch, int(b)).random(DRAW_BLOCK)
        where = blocks == b
        out[where] = u[slots[where] % DRAW_BLOCK]
    return out


def rest_cdf(logprobs: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(B, C) float64 cumulative teacher probabilities in class-id order, the exact classes left out (their
    mass is 0), from (B, C) log-probs and the (B, k) exact class ids."""
    p = np.exp(np.asarray(logprobs, dtype=np.float64))
    np.put_along_axis(p, np.asarray(exact, dtype=np.int64), 0.0, axis=-1)
    return np.cumsum(p, axis=-1)


def draw_points(cdf: np.ndarray, u: np.ndarray, m: int) -> np.ndarray:
    """(B, M) float64 positions r (u + j) / M on each row's cumulative rest distribution (r = its total)."""
    return (np.asarray(u, dtype=np.float64)[:, None] + np.arange(m)) / m * cdf[:, -1:]


def systematic_draws(logprobs: np.ndarray, exact: np.ndarray, m: int, u: np.ndarray) -> np.ndarray:
    """(B, M) int64 class ids, ascending: the classes under M systematic points of each view's rest.

    ``logprobs``: (B, C) the teacher's log-probs; ``exact``: (B, k) the classes stored exactly; ``u``: (B,)
    the views' offsets (:func:`draw_uniforms`). A point on a class boundary goes to the class above it, so a
    class with no mass (an exact one, or an underflow) is never drawn. A view with no rest mass at all draws
    class C - 1 M times; its columns then carry no mass.
    """
    cdf = rest_cdf(logprobs, exact)
    points = draw_points(cdf, u, m)
    c = cdf.shape[-1]
    out = np.empty(points.shape, dtype=np.int64)
    for row in range(cdf.shape[0]):
        out[row] = np.searchsorted(cdf[row], points[row], side="right")
    return np.minimum(out, c - 1)


def draw_value(topk_logprob: np.ndarray, m: int) -> np.ndarray:
    """(B,) float16 log(r / M), r = 1 - the stored top-k mass, rounded up to the next float16 so the row's mass
    is at least 1 (``-inf`` where the top-k holds all the mass). Every reader derives it the same way."""
    lp = np.asarray(topk_logprob)
    mass = np.exp(lp.astype(np.float64)).sum(-1)
    rest = np.maximum(0.0, 1.0 - mass) / m
    with np.errstate(divide="ignore"):
        exact = np.log(rest)
    v = exact.astype(np.float16)
    short = v.astype(np.float64) < exact
    v[short] = np.nextafter(v[short], np.float16(0))
    return v


def with_draws(
    topk_logprob: np.ndarray, topk_class: np.ndarray, draw_class: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """In-memory rows (float16 (B, k+M), classes (B, k+M)) from the exact top-k and the sorted draws."""
    m = draw_class.shape[-1]
    value = draw_value(topk_logprob, m)
    lp = np.concatenate([topk_logprob, np.repeat(value[:, None], m, axis=1)], axis=1)
    return lp, np.concatenate([topk_class, draw_class.astype(topk_class.dtype)], axis=1)


def to_gaps(draw_class: np.ndarray) -> np.ndarray:
    """Sorted draws as stored: the first class id, then the gap to each next one (0 for a repeat). Small
    non-negative numbers with free high bits, which bit-shuffling and zstd compress well."""
    d = np.asarray(draw_class)
    return np.concatenate([d[:, :1], np.diff(d, axis=1)], axis=1).astype(d.dtype)


def from_gaps(gaps: np.ndarray) -> np.ndarray:
    """The sorted draws of stored gaps (:func:`to_gaps`)."""
    return np.cumsum(gaps, axis=1, dtype=np.int64).astype(gaps.dtype)


def check_draws(
    logprobs: np.ndarray, exact: np.ndarray, stored: np.ndarray, u: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each stored draw against a fresh teacher distribution: (B, M) bool ``wrong`` and ``knife_edge``.

    A draw is right when its point lies in its class's interval of the fresh cumulative rest. A teacher rerun
    on another device or batch moves the intervals by float error, so a point within ``tolerance`` (in
    probability) of its stored class's interval is accepted and counted as a knife edge instead.
    """
    cdf = rest_cdf(logprobs, exact)
    points = draw_points(cdf, u, stored.shape[-1])
    cls = np.asarray(stored, dtype=np.int64)
    hi = np.take_along_axis(cdf, cls, axis=-1)
    lo = np.where(cls > 0, np.take_along_axis(cdf, np.maximum(cls - 1, 0), axis=-1), 0.0)
    inside = (points >= lo) & (points < hi)
    near = (points >= lo - tolerance) & (points < hi + tolerance)
    return ~near, near & ~inside
