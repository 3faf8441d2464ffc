"""Work units in the format: the slots of an epoch cut into fixed runs of ``unit_size``, each
committed whole; and the checks a unit's rows must pass before they are written."""

from __future__ import annotations

import numpy as np

from kdcache.teacher_cache.store.fields import UnitData, field_layout
from kdcache.teacher_cache.store.manifest import Manifest


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
    layout = field_layout(manifest.record_width, manifest.label_width, manifest.num_classes)
    for name, arr in data.arrays().items():
        dtype, row = layout[name]
        if arr.dtype != dtype or arr.shape != (b - a, *row):
            raise ValueError(
                f"unit {unit}: {name} is {arr.dtype}{list(arr.shape)}, expected {dtype}{[b - a, *row]} "
                f"(slots {a}..{b - 1}, {manifest.label_scheme}, record width {manifest.record_width})"
            )
    n, r, c = manifest.dataset["num_samples"], manifest.repeats, manifest.num_classes
    _in_range(unit, "sample_id", data.sample_id, 0, n)
    _in_range(unit, "repeat", data.repeat, 0, r)
    _in_range(unit, "topk_class", data.topk_class, 0, c)
    lp = data.topk_logprob.astype(np.float32)
    if np.isnan(lp).any() or (lp > 1e-3).any():
        raise ValueError(f"unit {unit}: topk_logprob must be log-probabilities (<= 0, no NaN)")
    # Format 3's draw columns follow the ranked ones: equal values, and a class may repeat (store/draws.py).
    ranked = manifest.ranked
    if (np.diff(lp[:, :ranked], axis=1) > 0).any():
        raise ValueError(f"unit {unit}: topk_logprob rows must be sorted in descending order")
    if ranked > 1 and (np.diff(np.sort(data.topk_class[:, :ranked], axis=1), axis=1) == 0).any():
        raise ValueError(f"unit {unit}: a row of topk_class names the same class twice")


def _in_range(unit: int, name: str, arr: np.ndarray, lo: int, hi: int) -> None:
    if arr.size and (int(arr.min()) < lo or int(arr.max()) >= hi):
        raise ValueError(f"unit {unit}: {name} values must lie in {lo}..{hi - 1}, got {arr.min()}..{arr.max()}")
