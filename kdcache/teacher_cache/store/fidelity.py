"""How faithful the stored soft labels are: per-view figures computed by the build, and their summary.

The build has the teacher's full logits. For each view it computes, on the device, two figures about
what it stores (top-k log-probs + ids) against what it had:

- ``outside``: the teacher's probability mass outside the k stored classes (1 - top-k mass);
- ``kl``: KL(teacher || target) in nats, where target is what training rebuilds from the stored fp16
  top-k with the one rule of :func:`topk_to_probs` (leftover mass spread evenly).

Summary statistics (mean, p50, p90, p99 over all views of a build) must merge across ranks and
resumed runs, and a cache of 10^9 views cannot keep every value. So each unit keeps a **fixed
histogram** (plus exact sums for the means): counts add up whichever process measured which unit.
Quantiles are read off the histogram as the upper edge of the bin holding them, i.e. an upper bound
within one bin: 0.005 for ``outside`` (linear bins on [0, 1]) and 6 % relative for ``kl`` (40
geometric bins per decade from 1e-4 to 1e2; below 1e-4 reports 1e-4, above 1e2 reports inf).

Format 3 stores draws, whose per-view KL is meaningless (zero target mass where the teacher has some):
its units record ``outside`` (mass outside the exact top-k), ``noise`` (per view, the L1 distance between
the rebuilt target and the teacher, 0..2; linear bins of 0.01) and ``bias``: per unit, the L1 norm of the
mean target minus the mean teacher over the unit's views, which shrinks with the views averaged for an
unbiased scheme and stays put for a biased one.

These figures depend on float kernels (device, AMP, library versions), so they are bookkeeping, not
content: they live in their own objects (``fidelity/<epoch>-<unit>.json`` per unit, written after
the unit's commit, and ``fidelity.json``, merged at finalize), outside the manifest and the content
hash. Readers of format 1 ignore both. A unit committed without its figures (a build stopped between
the two writes, or built by an older kdcache) is simply not counted: ``views`` says how many were.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdcache.storage import Storage
from kdcache.teacher_cache.store.manifest import Manifest

FIDELITY = "fidelity.json"
FIDELITY_DIR = "fidelity"
STATS = ("outside", "kl")
DRAW_STATS = ("outside", "noise")  # format 3
QUANTILES = (50, 90, 99)
_NOISE_BINS = 200  # linear on [0, 2]

_OUT_BINS = 200  # linear on [0, 1]
_KL_LO, _KL_DECADES, _KL_PER_DECADE = -4, 6, 40  # geometric on [1e-4, 1e2]
_KL_BINS = _KL_DECADES * _KL_PER_DECADE + 2  # + [0, 1e-4) and [1e2, inf)


def _bin(name: str, values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if name == "outside":
        return np.clip(np.ceil(v * _OUT_BINS).astype(np.int64) - 1, 0, _OUT_BINS - 1)
    if name == "noise":
        return np.clip(np.ceil(v * _NOISE_BINS / 2).astype(np.int64) - 1, 0, _NOISE_BINS - 1)
    with np.errstate(divide="ignore"):
        pos = (np.log10(np.maximum(v, 0.0)) - _KL_LO) * _KL_PER_DECADE
    pos = np.clip(np.nan_to_num(pos, nan=0.0, neginf=0.0), 0.0, float(_KL_BINS))  # KL 0 -> bin 0; castable
    # bin 0: v < 1e-4 (and 0); bin i >= 1: (edge(i-1), edge(i)]; last: >= 1e2
    return np.clip(np.ceil(pos).astype(np.int64), 0, _KL_BINS - 1)


def _upper_edge(name: str, index: int) -> float:
    if name == "outside":
        return (index + 1) / _OUT_BINS
    if name == "noise":
        return 2 * (index + 1) / _NOISE_BINS
    if index >= _KL_BINS - 1:
        return math.inf
    return float(10.0 ** (_KL_LO + index / _KL_PER_DECADE))


_BINS = {"outside": _OUT_BINS, "kl": _KL_BINS, "noise": _NOISE_BINS}


@dataclass
class FidelityStats:
    """Mergeable summary of per-view figures: view count, exact sums and fixed histograms (``names``:
    :data:`STATS`, or :data:`DRAW_STATS` for format 3, which adds the per-unit ``bias``)."""

    names: tuple[str, ...] = STATS
    views: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    # exact maxima: a quantile never exceeds them (for k = C every view's mass outside is exactly 0)
    maxima: dict[str, float] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    # format 3: per unit, the L1 norm of mean target - mean teacher; summed over units, with their count
    bias_sum: float = 0.0
    bias_max: float = 0.0
    bias_units: int = 0
    _diff: np.ndarray | None = None  # the open unit's sum of (target - teacher) over its views so far

    def __post_init__(self) -> None:
        for name in self.names:
            self.sums.setdefault(name, 0.0)
            self.maxima.setdefault(name, 0.0)
            self.counts.setdefault(name, np.zeros(_BINS[name], np.int64))

    def add(self, *figures: np.ndarray, diff: np.ndarray | None = None) -> None:
        """Add the figures of a batch of views (1-D arrays of equal length, in ``names`` order); ``diff``
        (format 3): the batch's sum over views of target - teacher, (C,), for the unit's bias."""
        for name, v in zip(self.names, figures, strict=True):
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            self.sums[name] += float(v.sum())
            if v.size:
                self.maxima[name] = max(self.maxima[name], float(v.max()))
            self.counts[name] += np.bincount(_bin(name, v), minlength=len(self.counts[name]))
        self.views += int(np.asarray(figures[0]).size)
        if diff is not None:
            d = np.asarray(diff, dtype=np.float64)
            self._diff = d if self._diff is None else self._diff + d

    def close_unit(self) -> None:
        """End of a unit's views: turn their summed differences into the unit's bias figure."""
        if self._diff is not None and self.views:
            bias = float(np.abs(self._diff / self.views).sum())
            self.bias_sum, self.bias_units = self.bias_sum + bias, self.bias_units + 1
            self.bias_max = max(self.bias_max, bias)
        self._diff = None

    def merge(self, other: FidelityStats) -> None:
        self.views += other.views
        for name in self.names:
            self.sums[name] += other.sums[name]
            self.maxima[name] = max(self.maxima[name], other.maxima[name])
            self.counts[name] += other.counts[name]
        self.bias_sum += other.bias_sum
        self.bias_units += other.bias_units
        self.bias_max = max(self.bias_max, other.bias_max)

    def mean(self, name: str) -> float | None:
        return self.sums[name] / self.views if self.views else None

    def quantile(self, name: str, q: float) -> float | None:
        """Upper bound (within one bin, and never above the largest value) of the q-th percentile."""
        if not self.views:
            return None
        cum = np.cumsum(self.counts[name])
        rank = max(1, math.ceil(q / 100 * self.views - 1e-9))  # 1-based rank of the percentile's view
        return min(_upper_edge(name, int(np.searchsorted(cum, rank, side="left"))), self.maxima[name])

    def summary(self) -> dict[str, Any]:
        """{"views": n, "outside": {"mean", "p50", "p90", "p99"}, "kl" (or "noise"): {...}} (None when no
        views); format 3 adds "bias": {"mean", "max", "units"}."""
        out: dict[str, Any] = {"views": self.views}
        for name in self.names:
            row = {"mean": self.mean(name)}
            row.update({f"p{q}": self.quantile(name, q) for q in QUANTILES})
            out[name] = row
        if "noise" in self.names:
            units = self.bias_units
            out["bias"] = {"mean": self.bias_sum / units if units else None, "max": self.bias_max, "units": units}
        return out

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "views": self.views,
            "sums": self.sums,
            "maxima": self.maxima,
            # sparse: {bin: count}, so a unit's object stays small
            "counts": {n: {str(int(i)): int(c[i]) for i in np.flatnonzero(c)} for n, c in self.counts.items()},
        }
        if "noise" in self.names:  # formats 1 and 2 keep their documents as they were
            doc["bias"] = {"sum": self.bias_sum, "max": self.bias_max, "units": self.bias_units}
        return (json.dumps(doc, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> FidelityStats:
        doc = json.loads(raw)
        s = cls(names=DRAW_STATS if "noise" in doc["sums"] else STATS)
        s.views = int(doc["views"])
        for name in s.names:
            s.sums[name] = float(doc["sums"][name])
            s.maxima[name] = float(doc.get("maxima", {}).get(name, math.inf))
            for i, c in doc["counts"][name].items():
                s.counts[name][int(i)] = int(c)
        bias = doc.get("bias", {})
        s.bias_sum, s.bias_max, s.bias_units = (
            float(bias.get("sum", 0.0)),
            float(bias.get("max", 0.0)),
            int(bias.get("units", 0)),
        )
        return s


def unit_key(epoch: int, unit: int) -> str:
    return f"{FIDELITY_DIR}/e{epoch:05d}-u{unit:06d}.json"


def write_unit_stats(storage: Storage, epoch: int, unit: int, stats: FidelityStats) -> None:
    storage.write(unit_key(epoch, unit), stats.to_json())


def merge_unit_stats(storage: Storage, units: set[tuple[int, int]], names: tuple[str, ...] = STATS) -> FidelityStats:
    """The merged figures of ``units`` (committed units); units without figures are left out."""
    keys = [unit_key(e, u) for e, u in sorted(units)]
    present = set(storage.listdir(FIDELITY_DIR)) if storage.exists(FIDELITY_DIR) else set()
    keys = [k for k in keys if k.split("/", 1)[1] in present]
    total = FidelityStats(names=names)
    for raw in storage.read_many(keys) if keys else []:
        total.merge(FidelityStats.from_json(raw))
    return total


def write_summary(storage: Storage, stats: FidelityStats, manifest: Manifest) -> dict[str, Any]:
    """Write ``fidelity.json`` (summary + the merged histograms) and return the summary."""
    m = manifest
    stored = "top-k fp16 log-probs" + (f" + {m.tail_classes} tail classes at 4 bits" if m.tail_classes else "")
    rule = f"{stored}, leftover mass spread evenly (topk_to_probs), T=1"
    if m.draws:
        rule = f"exact top-k fp16 log-probs + {m.draws} systematic draws from the rest, each rest/{m.draws} (T=1)"
    doc = {
        "topk": m.topk,
        "tail_classes": m.tail_classes,
        **({"draws": m.draws} if m.draws else {}),
        "num_classes": m.num_classes,
        "rule": rule,
        "quantiles": "upper bin edges: outside 0.005 linear; kl 40 geometric bins per decade from 1e-4",
        **stats.summary(),
        "histogram": json.loads(stats.to_json()),
    }
    storage.write(FIDELITY, (json.dumps(doc, indent=1) + "\n").encode())
    return {**stats.summary(), **({"draws": m.draws} if m.draws else {})}


def read_summary(storage: Storage) -> dict[str, Any] | None:
    """The summary in ``fidelity.json``, or None (a cache built before it existed, or unfinished)."""
    try:
        doc = json.loads(storage.read(FIDELITY))
    except FileNotFoundError:
        return None
    return {k: doc[k] for k in ("views", "outside", "kl", "noise", "bias", "draws") if k in doc}


def format_summary(s: dict[str, Any] | None, views: int | None = None) -> str:
    """One line for humans: 'mass outside the stored classes mean 0.44 (p50 .., p90 .., p99 ..); KL ...'."""
    if not s or not s.get("views"):
        return "not recorded (cache built before kdcache measured it, or no views yet)"

    def row(d: dict[str, Any]) -> str:
        return f"mean {d['mean']:.3f} (p50 {d['p50']:.3f}, p90 {d['p90']:.3f}, p99 {d['p99']:.3f})"

    of = f" of {views:,}" if views is not None and views != s["views"] else ""
    if "noise" in s:
        bias = s.get("bias") or {}
        bias_text = (
            f"mean {bias['mean']:.3f} over {bias['units']} unit(s)" if bias.get("mean") is not None else "not measured"
        )
        return (
            f"mass outside the exact top-k {row(s['outside'])}; the {s.get('draws', 'M')} draws are unbiased "
            f"(they average to the teacher), per-view L1 noise {row(s['noise'])}; L1 of mean target - mean "
            f"teacher per unit {bias_text}; {s['views']:,}{of} views"
        )
    return (
        f"mass outside the stored classes {row(s['outside'])}; KL(teacher||target) {row(s['kl'])} nats; "
        f"{s['views']:,}{of} views"
    )


def topk_fidelity(logits: Any, topk_logprob: Any, topk_class: Any) -> tuple[Any, Any]:
    """Per-view (outside, kl) float32 torch tensors, on the logits' device, for what is stored.

    ``outside`` = 1 - the teacher's top-k mass (float32 softmax); ``kl`` = KL(softmax(logits) || q)
    with q = topk_to_probs(stored fp16 log-probs, ids), floored at the smallest normal float32 (q is 0
    only where fp16 rounding pushed the stored mass to 1; the floor keeps the figure finite).
    """
    import torch

    from kdcache.teacher_cache.store.topk import topk_to_probs

    lp = torch.log_softmax(logits.float(), dim=-1)
    p = lp.exp()
    cls = topk_class.long()
    outside = (1.0 - p.gather(-1, cls).sum(-1)).clamp_min(0.0)
    q = topk_to_probs(topk_logprob, cls, int(logits.shape[-1]))
    logq = q.clamp_min(torch.finfo(torch.float32).tiny).log()
    kl = (p * (lp - logq)).sum(-1).clamp_min(0.0)
    return outside, kl
