"""Format 2's tail arithmetic: 4-bit codes of log-probs below an anchor, and back (docs/cache-format.md,
"Format version 2: the tail"). One implementation in torch; numpy arrays in give numpy arrays out (the
readers and ``verify`` work in numpy, the build on the teacher's device).

A code c stands for ``float16(a - STEP * (c + 0.5))`` below the anchor a (the view's k-th stored, float16
log-prob). A value's own bin gives the plain code ``floor((a - l) / STEP)``; a guarded row takes
``ceil((a - l) / STEP - 0.5)``, whose values never exceed the exact ones. Codes are clipped to 0..15.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported on first use: reading a format 1 cache need not pay for it
    import torch

TAIL_BITS = 4
TAIL_LEVELS = 2**TAIL_BITS
TAIL_STEP = 0.5  # nats per code: 16 codes cover 8 nats below the anchor (e^-8 of its mass is noise)
_FP16_MIN = float(np.finfo(np.float16).min)
# A row is guarded only where plain codes fall short by more than this much mass: below it the sums are
# float noise (a teacher whose leftover is under float32's resolution), and a guard would follow the noise.
GUARD_SLACK = 1e-9


def _torch(x: Any) -> tuple[torch.Tensor, bool]:
    """(tensor, whether x was numpy): numpy arrays share memory with the tensor (no copy if contiguous)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x, False
    return torch.from_numpy(np.ascontiguousarray(x)), True


def _back(t: torch.Tensor, numpy: bool) -> Any:
    return t.numpy() if numpy else t


def tail_values(anchor: Any, codes: Any) -> Any:
    """Decoded float16 log-probs (..., m) of codes (..., m) below float16 anchors (...,). Exact in float32
    (a float16 minus a multiple of 0.25) before the one rounding to float16, so every reader gets the
    same bits."""
    a, as_np = _torch(anchor)
    c, _ = _torch(codes)
    v = a.float().unsqueeze(-1) - TAIL_STEP * (c.float() + 0.5)
    return _back(v.clamp_min(_FP16_MIN).half(), as_np)


def tail_codes_of(anchor: Any, logprob: Any) -> Any:
    """Plain codes (uint8 (..., m)): the bin of each exact log-prob (..., m) below float16 anchors (...,)."""
    import torch

    a, _ = _torch(anchor)
    lp, as_np = _torch(logprob)
    c = torch.floor((a.float().unsqueeze(-1) - lp.float()) / TAIL_STEP)
    return _back(c.clamp(0, TAIL_LEVELS - 1).to(torch.uint8), as_np)


def _down_codes(anchor: torch.Tensor, logprob: torch.Tensor) -> torch.Tensor:
    """Guarded codes: the first bin whose middle is not above the exact value."""
    import torch

    c = torch.ceil((anchor.float().unsqueeze(-1) - logprob.float()) / TAIL_STEP - 0.5)
    return c.clamp(0, TAIL_LEVELS - 1).to(torch.uint8)


def guard_margin(head: Any, exact: Any) -> Any:
    """Per row: the mass plain codes leave to the unstored classes minus half their true mass (float64);
    the row is guarded where this is < -GUARD_SLACK. ``head``: the stored float16 top-k; ``exact``: the exact
    log-probs (..., k+m) of the stored classes (the top-k's first)."""
    h, _ = _torch(head)
    x, as_np = _torch(exact)
    k = h.shape[-1]
    plain = tail_values(h[..., -1], tail_codes_of(h[..., -1], x[..., k:]))
    left = 1.0 - h.double().exp().sum(-1) - plain.double().exp().sum(-1)
    return _back(left - 0.5 * (1.0 - x.double().exp().sum(-1)), as_np)


def quantize_tail(exact: Any, k: int) -> Any:
    """float16 top-(k+m) log-probs as a version 2 cache stores them: columns < k rounded to float16,
    columns >= k replaced by their decoded codes. ``exact``: float32 (..., k+m), sorted descending
    (logits_to_topk's log-probs before the float16 cast).

    A code's value is its bin's middle, so a tail may decode to more mass than the teacher gave those
    classes. Where that would leave the unstored classes less than half of their true mass (a sharp
    teacher: little mass outside), the row takes the guarded codes, so the tail never eats the even spread.
    """
    import torch

    x, as_np = _torch(exact)
    head = x[..., :k].clamp_min(_FP16_MIN).half()
    if x.shape[-1] == k:
        return _back(head, as_np)
    anchor, tail = head[..., -1], x[..., k:]
    guarded = guard_margin(head, x) < -GUARD_SLACK
    codes = torch.where(guarded.unsqueeze(-1), _down_codes(anchor, tail), tail_codes_of(anchor, tail))
    return _back(torch.cat([head, tail_values(anchor, codes)], dim=-1), as_np)


def recover_codes(anchor: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The codes (uint8 (V, m)) whose decoded values are ``values`` (float16 (V, m)) below ``anchor`` (V,),
    where such codes exist (callers check: ``tail_values(anchor, codes)`` equals ``values``)."""
    c = np.rint((anchor.astype(np.float32)[:, None] - values.astype(np.float32)) / np.float32(TAIL_STEP) - 0.5)
    codes = np.clip(c, 0, TAIL_LEVELS - 1).astype(np.uint8)
    want = np.ascontiguousarray(values).view(np.uint16)
    # Below -512 float16's spacing (>= 0.5) rounds a bin middle half-way to its neighbour's: there a
    # neighbouring code may be the one whose decoded value has these bits.
    for step in (-1, 1):
        miss = tail_values(anchor, codes).view(np.uint16) != want
        if not miss.any():
            break
        codes = np.where(miss, np.clip(c + step, 0, TAIL_LEVELS - 1), codes).astype(np.uint8)
    return codes


def tail_bounds(logprob: np.ndarray, topk: int, rule: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per decoded tail value v of rows (V, k+m): the (low, high) bounds of the exact log-prob it codes.
    Plain rows: (v - STEP/2, v + STEP/2]; guarded rows: [v, v + STEP); rows whose rule is unknown: the
    union. ``rule`` per row: 0 plain, 1 guarded, -1 (or no ``rule``) unknown. The last code is open below
    (low = -inf). What a fresh teacher forward must fall within (``verify``)."""
    lp = np.asarray(logprob)
    v = lp[:, topk:].astype(np.float32)
    codes = recover_codes(lp[:, topk - 1], lp[:, topk:])
    r = np.full((len(v), 1), -1) if rule is None else np.asarray(rule).reshape(-1, 1)
    low = np.where(r == 1, v, v - TAIL_STEP / 2)
    high = np.where(r == 0, v + TAIL_STEP / 2, v + TAIL_STEP)
    return np.where(codes == TAIL_LEVELS - 1, -np.inf, low), high
