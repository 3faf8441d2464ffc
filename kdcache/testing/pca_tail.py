"""Exact top-k + low-rank exponential-family tail ("top-k + PCA tail").

A reference implementation for the soft-label studies (benchmarks/studies/: label_fidelity.py,
kd_parity.py, pca_tail.py), not part of the cache format: no build writes it and no trainer reads it.

Stored once per cache (fit):
    mu     float32 (C,)    mean of the per-view-centred teacher logits of the fit sample
    basis  float32 (C, r)  top-r principal directions (orthonormal columns) of those centred logits
    sigma  float32 (r,)    std of the principal components (ridge prior of the coefficient fit)
    scale  float32 (r,)    quantisation step of each coefficient (99.9th pct of |c| on the fit sample / qmax)
    qmax   int32   ()      2**(bits-1)-1  (bits=4 -> 7; values stored in int8)
Stored per view (encode), fixed shapes/dtypes:
    topk_logprob float16 (B, k)  teacher log-softmax at T=1, sorted descending (unchanged from today)
    topk_class   int16   (B, k)  class ids of those (unchanged from today)
    tail_coef    int8    (B, r)  values in [-qmax, qmax]; store with blosc bitshuffle (4 live bits -> ~r/2 B)
Decode: q_i = exp(topk_logprob_i) on the top-k; the leftover mass m = 1 - sum(top-k probs) is spread over the
other classes in proportion to softmax(mu + basis @ (tail_coef * scale)) restricted to them. At temperature T the
result is softmax(log q / T) (tail shape included, so it stays consistent with softmax(z/T) as far as the model is).
The coefficients are chosen by the encoder (which has the full logits) to minimise KL(teacher tail || model tail)
(+ a tiny ridge), a convex problem solved by damped Newton: no RNG anywhere.
"""

from __future__ import annotations

import numpy as np


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def fit(logits_sample: np.ndarray, r: int = 32, bits: int = 4, k: int = 10, lam: float = 1e-3) -> dict:
    """The model (mu, basis, sigma, scale, qmax, lam) of rank ``r`` fitted on sample logits (N, C)."""
    z = np.asarray(logits_sample, np.float64)
    xc = z - z.mean(1, keepdims=True)
    mu = xc.mean(0)
    _, S, Vt = np.linalg.svd(xc - mu, full_matrices=False)
    U, sig = Vt[:r].T.copy(), S[:r] / np.sqrt(len(z))
    qmax = 2 ** (bits - 1) - 1
    model = dict(
        mu=mu.astype(np.float32),
        basis=U.astype(np.float32),
        sigma=sig.astype(np.float32),
        scale=np.ones(r, np.float32),
        qmax=np.int32(qmax),
        lam=np.float32(lam),
    )
    c = _fit_coef(z, _topk(z, k)[0], model)
    model["scale"] = (np.percentile(np.abs(c), 99.9, axis=0) / qmax).astype(np.float32)
    return model


def _topk(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    lp = _log_softmax(z)
    idx = np.argsort(-lp, 1, kind="stable")[:, :k]
    return idx, np.take_along_axis(lp, idx, 1)


def _fit_coef(z: np.ndarray, idx: np.ndarray, model: dict, iters: int = 15) -> np.ndarray:
    mu, U = model["mu"].astype(np.float64), model["basis"].astype(np.float64)
    sig, lam = model["sigma"].astype(np.float64), float(model["lam"])
    N, C = z.shape
    known = np.zeros((N, C), bool)
    np.put_along_axis(known, idx, True, 1)
    pt = np.exp(_log_softmax(z)) * ~known
    pt /= pt.sum(1, keepdims=True)
    ninf = np.where(known, -np.inf, 0.0)

    def f_g(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = mu + c @ U.T + ninf
        smax = s.max(1, keepdims=True)
        e = np.exp(s - smax)
        zs = e.sum(1, keepdims=True)
        f = -(pt * np.where(known, 0.0, s)).sum(1) + (np.log(zs) + smax)[:, 0] + 0.5 * lam * ((c / sig) ** 2).sum(1)
        return f, (e / zs - pt) @ U + lam * c / sig**2, e / zs

    c = (z - z.mean(1, keepdims=True) - mu) @ U
    f, g, q = f_g(c)
    for _ in range(iters):
        qU = q @ U
        H = np.empty((N, U.shape[1], U.shape[1]))
        for a in range(0, N, 256):  # U^T diag(q_n) U per view, in chunks (BLAS matmul)
            H[a : a + 256] = np.matmul(U.T[None] * q[a : a + 256, None, :], U)
        H += np.diag(lam / sig**2) - qU[:, :, None] * qU[:, None, :]
        step = np.linalg.solve(H, g[..., None])[..., 0]
        t = np.ones(N)
        for _ in range(8):
            cn = c - t[:, None] * step
            fn, gn, qn = f_g(cn)
            bad = fn > f + 1e-12
            if not bad.any():
                break
            t[bad] *= 0.5
        ok = ~bad
        c[ok], f[ok], g[ok], q[ok] = cn[ok], fn[ok], gn[ok], qn[ok]
    return c


def encode(logits: np.ndarray, model: dict, k: int = 10) -> dict:
    """Per view: top-k log-probs and classes, and the quantised tail coefficients."""
    z = np.asarray(logits, np.float64)
    idx, lp = _topk(z, k)
    c = _fit_coef(z, idx, model)
    qmax = int(model["qmax"])
    coef = np.clip(np.round(c / model["scale"].astype(np.float64)), -qmax, qmax).astype(np.int8)
    return dict(topk_logprob=lp.astype(np.float16), topk_class=idx.astype(np.int16), tail_coef=coef)


def decode(views: dict, model: dict, num_classes: int, temperature: float = 1.0) -> np.ndarray:
    """The reconstructed distribution (N, C) float32 the trainer would use."""
    lp = views["topk_logprob"].astype(np.float64)
    idx = views["topk_class"].astype(np.int64)
    c = views["tail_coef"].astype(np.float64) * model["scale"].astype(np.float64)
    s = model["mu"].astype(np.float64) + c @ model["basis"].astype(np.float64).T
    np.put_along_axis(s, idx, -np.inf, 1)
    ls = _log_softmax(s)
    m = np.clip(1.0 - np.exp(lp).sum(1), 1e-12, None)
    logq = np.log(m)[:, None] + ls
    np.put_along_axis(logq, idx, lp, 1)
    if temperature != 1.0:
        logq = logq / temperature
    return np.exp(_log_softmax(logq)).astype(np.float32)
