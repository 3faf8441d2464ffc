"""How the soft labels are stored, per format version, and how readers turn them back into rows.

Format 1 stores the top-k. Format 2 (below) adds a tail of further classes with 4-bit log-probabilities
(docs/cache-format.md, "Format version 2: the tail"). Format 3 stores an exact top-k plus systematic
draws from the rest of the distribution (:mod:`kdcache.teacher_cache.store.draws`): the field
``draw_gap`` (M) holds the sorted drawn class ids as the first id and the gaps to the next.

The arithmetic of the codes is in :mod:`kdcache.teacher_cache.store.tail`. A view's stored fields in
version 2:

- ``topk_logprob`` (float16, k) and ``topk_class`` (k): the teacher's k most probable classes, unchanged
  from version 1, so every reader of version 1's fields still reads the top-k;
- ``tail_class`` (m): the classes ranked k+1 .. k+m;
- ``tail_code`` (uint8, m): their log-probs as 4-bit codes below the anchor a, the view's k-th stored
  log-prob: a code c stands for a - STEP * (c + 0.5), rounded to float16.

In memory (``UnitData``) a version 2 view is a top-(k+m) row: the k exact log-probs followed by the m
decoded ones. Everything that turns rows into distributions (training, ``show --dense``, the build's
fidelity report) therefore treats both versions alike; only the backends see the stored fields, through
:func:`encode_labels` and :func:`decode_labels`. Decoding is exact and re-encoding a decoded row gives its
codes back, so a cache's bytes and content hash survive a read-write round trip (export).
"""

from __future__ import annotations

import numpy as np

from kdcache.teacher_cache.store.draws import draw_value, from_gaps, to_gaps, with_draws
from kdcache.teacher_cache.store.fields import FIELDS, UnitData, class_dtype, field_layout
from kdcache.teacher_cache.store.manifest import Manifest
from kdcache.teacher_cache.store.tail import recover_codes, tail_values

TAIL_FIELDS = ("tail_class", "tail_code")
DRAW_FIELDS = ("draw_gap",)


def label_fields(format_version: int) -> tuple[str, ...]:
    """The stored label fields beyond version 1's top-k, for a format version."""
    return {1: (), 2: TAIL_FIELDS, 3: DRAW_FIELDS}[format_version]


def stored_label_layout(
    topk: int, tail: int, num_classes: int, draws: int = 0
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The label fields as stored: version 1's two, plus version 2's tail when ``tail`` > 0 or version 3's
    draws when ``draws`` > 0."""
    cls = class_dtype(num_classes)
    out = {"topk_logprob": (np.dtype(np.float16), (topk,)), "topk_class": (cls, (topk,))}
    if tail:
        out.update({"tail_class": (cls, (tail,)), "tail_code": (np.dtype(np.uint8), (tail,))})
    if draws:
        out["draw_gap"] = (cls, (draws,))
    return out


def encode_labels(logprob: np.ndarray, classes: np.ndarray, topk: int, draws: int = 0) -> dict[str, np.ndarray]:
    """Stored label fields of in-memory rows (top-k, then a tail or draws). Raises ValueError if the tail
    columns are not decoded codes (what :func:`quantize_tail` makes), or the draw columns not what
    :func:`~kdcache.teacher_cache.store.draws.with_draws` makes: they would not survive the round trip."""
    out = {"topk_logprob": logprob[:, :topk], "topk_class": classes[:, :topk]}
    if logprob.shape[1] == topk:
        return out
    if draws:
        drawn = classes[:, topk:]
        value = np.repeat(draw_value(logprob[:, :topk], draws)[:, None], draws, axis=1)
        if value.tobytes() != np.ascontiguousarray(logprob[:, topk:]).tobytes():
            raise ValueError("draw columns must hold log(rest / draws) of the row's top-k (store.draws.with_draws)")
        if (np.diff(drawn.astype(np.int64), axis=1) < 0).any():
            raise ValueError("draw columns must hold their class ids in ascending order")
        if (drawn[:, :, None] == classes[:, None, :topk]).any():
            raise ValueError("a drawn class is one of the row's exact top-k: draws come from the rest")
        out["draw_gap"] = to_gaps(drawn)
        return out
    anchor, tail = logprob[:, topk - 1], logprob[:, topk:]
    codes = recover_codes(anchor, tail)
    if tail_values(anchor, codes).tobytes() != np.ascontiguousarray(tail).tobytes():
        raise ValueError("tail log-probs are not format version 2 codes; make them with store.tail.quantize_tail")
    out.update({"tail_class": classes[:, topk:], "tail_code": codes})
    return out


def decode_labels(stored: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """In-memory (logprob, classes) rows from stored label fields (either version)."""
    lp, cls = stored["topk_logprob"], stored["topk_class"]
    if "draw_gap" in stored:
        gaps = stored["draw_gap"]
        if gaps.ndim != 2 or gaps.shape[0] != lp.shape[0]:
            raise ValueError(f"draw_gap {gaps.shape} does not match {lp.shape[0]} rows")
        return with_draws(lp, cls, from_gaps(gaps))
    if "tail_code" not in stored:
        return lp, cls
    codes, tail_cls = stored["tail_code"], stored["tail_class"]
    if codes.shape != tail_cls.shape or codes.shape[0] != lp.shape[0]:
        raise ValueError(f"tail_code {codes.shape} and tail_class {tail_cls.shape} do not match {lp.shape[0]} rows")
    values = tail_values(lp[:, -1], codes)
    return np.concatenate([lp, values], axis=1), np.concatenate([cls, tail_cls.astype(cls.dtype)], axis=1)


def stored_layout(manifest: Manifest) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Every stored field of a view (name -> dtype, row shape), in storage order."""
    m = manifest
    layout = field_layout(m.record_width, m.topk, m.num_classes)
    layout.update(stored_label_layout(m.topk, m.tail_classes, m.num_classes, m.draws))
    return layout


def encode_unit(manifest: Manifest, data: UnitData) -> dict[str, np.ndarray]:
    """The stored arrays of in-memory rows, in :func:`stored_layout` order."""
    out = {name: getattr(data, name) for name in FIELDS if name not in ("topk_logprob", "topk_class")}
    out.update(encode_labels(data.topk_logprob, data.topk_class, manifest.topk, manifest.draws))
    return {name: out[name] for name in stored_layout(manifest)}


def decode_unit(stored: dict[str, np.ndarray]) -> UnitData:
    """In-memory rows from stored arrays (any version: a tail or draws are decoded when present)."""
    lp, cls = decode_labels(stored)
    return UnitData.from_arrays({**stored, "topk_logprob": lp, "topk_class": cls})
