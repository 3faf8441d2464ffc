"""Format version 2's soft labels: the top-k exactly as in version 1, plus a tail of further classes
with 4-bit log-probabilities (docs/cache-format.md, "Format version 2: the tail").

A view's stored fields in version 2:

- ``topk_logprob`` (float16, k) and ``topk_class`` (k): the teacher's k most probable classes, unchanged
  from version 1, so every reader of version 1's fields still reads the top-k;
- ``tail_class`` (m): the classes ranked k+1 .. k+m;
- ``tail_code`` (uint8, m): their log-probs as codes c = floor((a - l) / STEP), clipped to 0 .. 15, where
  a is the view's k-th stored log-prob (the anchor). A code stands for a - STEP * (c + 0.5), the middle of
  its bin, rounded to float16.

In memory (``UnitData``) a version 2 view is a top-(k+m) row: the k exact log-probs followed by the m
decoded ones. Everything that turns rows into distributions (training, ``show --dense``, the build's
fidelity report) therefore treats both versions alike; only the backends see the stored fields, through
:func:`encode_labels` and :func:`decode_labels`. Decoding is exact and re-encoding a decoded row gives its
codes back, so a cache's bytes and content hash survive a read-write round trip (export, compaction).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdcache.teacher_cache.store.fields import FIELDS, UnitData, class_dtype, field_layout
from kdcache.teacher_cache.store.manifest import Manifest

TAIL_BITS = 4
TAIL_LEVELS = 2**TAIL_BITS
TAIL_STEP = 0.5  # nats per code: 16 codes cover 8 nats below the anchor (e^-8 of its mass is noise)
TAIL_FIELDS = ("tail_class", "tail_code")
_FP16_MIN = float(np.finfo(np.float16).min)


def tail_values(anchor: Any, codes: Any) -> Any:
    """Decoded float16 log-probs (..., m) of codes (..., m) below anchors (...,) (float16).

    numpy in -> numpy out, torch in -> torch out. The arithmetic is exact in float32 (an fp16 anchor minus a
    multiple of 0.25), so both give the same bits after the one rounding to float16.
    """
    if type(codes).__module__.startswith("torch"):
        v = anchor.float().unsqueeze(-1) - TAIL_STEP * (codes.float() + 0.5)
        return v.clamp_min(_FP16_MIN).half()
    v = np.asarray(anchor, np.float16).astype(np.float32)[..., None] - np.float32(TAIL_STEP) * (
        np.asarray(codes).astype(np.float32) + np.float32(0.5)
    )
    return np.maximum(v, np.float32(_FP16_MIN)).astype(np.float16)


def tail_codes_of(anchor: Any, logprob: Any) -> Any:
    """Codes (uint8, ..., m) of exact (float32) log-probs (..., m) below fp16 anchors (...,); torch or numpy."""
    if type(logprob).__module__.startswith("torch"):
        import torch

        c = torch.floor((anchor.float().unsqueeze(-1) - logprob.float()) / TAIL_STEP)
        return c.clamp(0, TAIL_LEVELS - 1).to(torch.uint8)
    a = np.asarray(anchor, np.float16).astype(np.float32)[..., None]
    c = np.floor((a - np.asarray(logprob, np.float32)) / np.float32(TAIL_STEP))
    return np.clip(c, 0, TAIL_LEVELS - 1).astype(np.uint8)


def tail_bounds(logprob: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per decoded tail value v of rows (..., k+m): (low, high) log-prob bounds of the exact value it codes.
    A code in its value's bin gives (v - STEP/2, v + STEP/2]; a guarded row's codes (:func:`quantize_tail`)
    give [v, v + STEP): together (v - STEP/2, v + STEP), open below for the last code. What a fresh teacher
    forward must fall within (``verify``)."""
    anchor = np.asarray(logprob[..., topk - 1 : topk], np.float32)
    tail = np.asarray(logprob[..., topk:], np.float32)
    c = np.clip(np.rint((anchor - tail) / np.float32(TAIL_STEP) - 0.5), 0, TAIL_LEVELS - 1)
    low = np.where(c == TAIL_LEVELS - 1, -np.inf, tail - TAIL_STEP / 2)
    return low, tail + TAIL_STEP


def quantize_tail(exact: Any, k: int) -> Any:
    """float16 top-(k+m) log-probs as a version 2 cache stores them: columns < k as given (rounded to
    float16), columns >= k replaced by their decoded codes. ``exact``: float32 (..., k+m), sorted
    descending (logits_to_topk's log-probs before the float16 cast). torch or numpy.

    A code's value is its bin's middle, so a decoded tail may hold more mass than the teacher gave those
    classes. Where that would leave the unstored classes less than half of their true mass (a sharp
    teacher: little mass outside), the row takes the codes whose values do not exceed the exact ones
    instead (:func:`_guarded_codes`), so the tail never eats the even spread.
    """
    if type(exact).__module__.startswith("torch"):
        import torch

        head = exact[..., :k].clamp_min(_FP16_MIN).half()
        if exact.shape[-1] == k:
            return head
        codes = _guarded_codes(exact, head, k)
        return torch.cat([head, tail_values(head[..., -1], codes)], dim=-1)
    exact = np.asarray(exact, np.float32)
    head = np.maximum(exact[..., :k], np.float32(_FP16_MIN)).astype(np.float16)
    if exact.shape[-1] == k:
        return head
    codes = _guarded_codes(exact, head, k)
    return np.concatenate([head, tail_values(head[..., -1], codes)], axis=-1)


def _guarded_codes(exact: Any, head: Any, k: int) -> Any:
    """The tail's codes: each value's bin, or, in rows where those bins' middles would leave the unstored
    classes under half their true mass, the codes one bin lower wherever the middle lies above the value."""
    torch_in = type(exact).__module__.startswith("torch")
    anchor, tail = head[..., -1], exact[..., k:]
    codes = tail_codes_of(anchor, tail)
    if torch_in:
        import torch

        x = (anchor.float().unsqueeze(-1) - tail.float()) / TAIL_STEP - 0.5
        down = torch.ceil(x).clamp(0, TAIL_LEVELS - 1).to(torch.uint8)
        true_left = 1.0 - exact.double().exp().sum(-1)
        stored = head.double().exp().sum(-1) + tail_values(anchor, codes).double().exp().sum(-1)
        risky = (1.0 - stored) < 0.5 * true_left
        return torch.where(risky.unsqueeze(-1), down, codes)
    x = (np.asarray(anchor).astype(np.float32)[..., None] - tail) / np.float32(TAIL_STEP) - np.float32(0.5)
    down = np.clip(np.ceil(x), 0, TAIL_LEVELS - 1).astype(np.uint8)
    true_left = 1.0 - np.exp(exact.astype(np.float64)).sum(-1)
    stored = np.exp(head.astype(np.float64)).sum(-1) + np.exp(tail_values(anchor, codes).astype(np.float64)).sum(-1)
    risky = (1.0 - stored) < 0.5 * true_left
    return np.where(risky[..., None], down, codes)


def stored_label_layout(topk: int, tail: int, num_classes: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The label fields as stored: version 1's two, plus version 2's tail when ``tail`` > 0."""
    cls = class_dtype(num_classes)
    out = {"topk_logprob": (np.dtype(np.float16), (topk,)), "topk_class": (cls, (topk,))}
    if tail:
        out.update({"tail_class": (cls, (tail,)), "tail_code": (np.dtype(np.uint8), (tail,))})
    return out


def encode_labels(logprob: np.ndarray, classes: np.ndarray, topk: int) -> dict[str, np.ndarray]:
    """Stored label fields of in-memory top-(k+m) rows. Raises ValueError if the tail columns are not
    decoded codes (what :func:`quantize_tail` makes): they would not survive the round trip."""
    out = {"topk_logprob": logprob[:, :topk], "topk_class": classes[:, :topk]}
    if logprob.shape[1] == topk:
        return out
    anchor, tail = logprob[:, topk - 1], logprob[:, topk:]
    # Decoded values sit at bin middles: rounding recovers the code exactly (fp16 error << STEP / 2)...
    c = np.rint((anchor.astype(np.float32)[:, None] - tail.astype(np.float32)) / np.float32(TAIL_STEP) - 0.5)
    codes = np.clip(c, 0, TAIL_LEVELS - 1).astype(np.uint8)
    want = np.ascontiguousarray(tail).view(np.uint16)
    # ...except below -512, where float16's spacing (>= 0.5) rounds a bin middle half-way to its neighbour's:
    # there a neighbouring code may be the one whose decoded value has these bits.
    for step in (-1, 1):
        miss = tail_values(anchor, codes).view(np.uint16) != want
        if not miss.any():
            break
        codes = np.where(miss, np.clip(c + step, 0, TAIL_LEVELS - 1), codes).astype(np.uint8)
    if tail_values(anchor, codes).tobytes() != want.tobytes():
        raise ValueError("tail log-probs are not format version 2 codes; make them with store.labels.quantize_tail")
    out.update({"tail_class": classes[:, topk:], "tail_code": codes})
    return out


def decode_labels(stored: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """In-memory (logprob, classes) rows from stored label fields (either version)."""
    lp, cls = stored["topk_logprob"], stored["topk_class"]
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
    layout.update(stored_label_layout(m.topk, m.tail_classes, m.num_classes))
    return layout


def encode_unit(manifest: Manifest, data: UnitData) -> dict[str, np.ndarray]:
    """The stored arrays of in-memory rows, in :func:`stored_layout` order."""
    out = {name: getattr(data, name) for name in FIELDS if name not in ("topk_logprob", "topk_class")}
    out.update(encode_labels(data.topk_logprob, data.topk_class, manifest.topk))
    return {name: out[name] for name in stored_layout(manifest)}


def decode_unit(stored: dict[str, np.ndarray]) -> UnitData:
    """In-memory rows from stored arrays (either version: a tail is decoded when present)."""
    lp, cls = decode_labels(stored)
    return UnitData.from_arrays({**stored, "topk_logprob": lp, "topk_class": cls})
