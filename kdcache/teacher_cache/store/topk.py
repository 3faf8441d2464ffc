"""Top-k soft labels: extraction from teacher logits, and reconstruction of the full distribution.

Reconstruction (docs/cache-format.md, "Soft labels"), for one view with stored log-probs l_1..l_k at
classes c_1..c_k out of C classes and temperature T:

    p_c = sum of exp(l_i) over i with c_i = c   if c is stored (format 3 may store a class in several columns)
    p_c = max(0, 1 - sum_i exp(l_i)) / (C - k)    otherwise
    q_c = p_c^(1/T) / sum_c' p_c'^(1/T)

The k exponentials and both sums (top-k mass, normaliser) run in float64, the rest in float32:
1 - mass cancels badly when the mass is close to 1, where a 1-ulp float32 difference between two
exp implementations would become a visible difference; in float64 numpy and torch agree to float32
rounding whatever their summation order. At T = 1 the normalisation only matters when fp16
rounding pushed the top-k mass above 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdcache.teacher_cache.store.fields import MAX_INT16_CLASSES
from kdcache.teacher_cache.store.tail import quantize_tail


def topk_to_probs(logprobs: Any, classes: Any, num_classes: int, temperature: float = 1.0) -> Any:
    """Full (..., C) float32 distribution from top-k log-probs and class ids (..., k).

    numpy in -> numpy out; torch in -> torch out on the same device (for use inside training).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = logprobs.shape[-1]
    # k may exceed C: format 3 stores a class drawn n times in n columns (store/draws.py).
    if tuple(classes.shape) != tuple(logprobs.shape) or k < 1:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and classes {tuple(classes.shape)} must have equal shapes "
            "(..., k) with k >= 1"
        )
    if type(logprobs).__module__.startswith("torch"):
        return _torch_probs(logprobs, classes, num_classes, temperature)
    return _numpy_probs(np.asarray(logprobs), np.asarray(classes), num_classes, temperature)


def _numpy_probs(lp: np.ndarray, cls: np.ndarray, c: int, t: float) -> np.ndarray:
    p64 = np.exp(lp.astype(np.float64))
    mass = p64.sum(-1, keepdims=True)
    p = p64.astype(np.float32)
    rest = (np.maximum(0.0, 1.0 - mass) / max(c - lp.shape[-1], 1)).astype(np.float32)
    out = np.broadcast_to(rest, (*lp.shape[:-1], c)).copy()
    idx = cls.astype(np.int64)
    # Zero, then add: a class may hold several columns (format 3's repeated draws); 0 + p is p exactly.
    np.put_along_axis(out, idx, 0.0, axis=-1)
    flat = out.reshape(-1, c)
    np.add.at(flat, (np.arange(flat.shape[0])[:, None], idx.reshape(-1, idx.shape[-1])), p.reshape(-1, p.shape[-1]))
    if t != 1.0:
        out = np.power(out, np.float32(1.0 / t))
    return out / out.sum(-1, keepdims=True, dtype=np.float64).astype(np.float32)


def _torch_probs(lp: Any, cls: Any, c: int, t: float) -> Any:
    import torch

    p64 = lp.double().exp()
    mass = p64.sum(-1, keepdim=True)
    p = p64.float()
    rest = ((1.0 - mass).clamp_min(0.0) / float(max(c - lp.shape[-1], 1))).float()
    out = rest.expand(*lp.shape[:-1], c).clone()
    idx = cls.long()
    # Zero, then add: a class may hold several columns (format 3's repeated draws); 0 + p is p exactly.
    out.scatter_(-1, idx, 0.0)
    out.scatter_add_(-1, idx, p)
    if t != 1.0:
        out = out.pow(1.0 / t)
    return out / out.sum(-1, keepdim=True, dtype=torch.float64).float()


def logits_to_topk(logits: Any, k: int, tail: int = 0) -> tuple[Any, Any]:
    """(float16 log-probs, int16/int32 class ids), each (..., k + tail), sorted by descending probability.

    With ``tail`` > 0 (format version 2) the columns after the k-th hold the next ``tail`` classes with
    their log-probs quantised as the cache stores them (:func:`kdcache.teacher_cache.store.labels.quantize_tail`).

    log_softmax runs in float32 whatever the logits' dtype. Ties are broken by the lower class id
    (a stable sort, unlike torch.topk) so every device and batch size stores the same bytes.
    Returns torch tensors on the logits' device.
    """
    import torch

    num_classes = logits.shape[-1]
    if not 1 <= k <= num_classes or not 0 <= tail <= num_classes - k:
        raise ValueError(f"need 1 <= k and 0 <= tail with k + tail <= {num_classes}, got k={k}, tail={tail}")
    lp = torch.log_softmax(logits.float(), dim=-1)
    values, idx = torch.sort(lp, dim=-1, descending=True, stable=True)
    values = quantize_tail(values[..., : k + tail], k)
    dtype = torch.int16 if num_classes <= MAX_INT16_CLASSES else torch.int32
    return values, idx[..., : k + tail].to(dtype)
