"""Top-k + PCA tail by rank and bits: what the low-rank tail buys over the cache's plain top-k.

The reference implementation is ``kdcache.testing.pca_tail`` (not part of the cache format): the
top-k log-probs stored exactly, the rest of the teacher's mass spread over the other classes in the
shape of a low-rank model of the logits (rank ``r``, ``bits``-bit coefficients per view). This study
fits it on photo set A's teacher logits and evaluates it on set B's, for every rank and bit width
asked for, next to the plain top-k (the leftover mass spread evenly, as format 1 caches do).

The logits are those ``label_fidelity.py`` keeps (``--logits``, npz with ``A_logits`` and ``B_logits``:
a real 1000-class teacher on seed-recipe views of real photos); run it first, e.g.
``python benchmarks/studies/label_fidelity.py --views 512 --ranks ""``.

Per row: tail bytes/view (the int8 coefficients, compressed with blosc zstd 5 bitshuffle as one frame
per field), mass outside the top-k (the same for every row: the tail only reshapes it), KL(teacher ||
target) mean and p90, L1 mean, and the seconds of fit + encode.

    python benchmarks/studies/pca_tail.py [--ranks 4,8,16,32] [--bits 4,8] [--k 10] [--views 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from numcodecs import Blosc

from kdcache.teacher_cache.store.topk import logits_to_topk, topk_to_probs
from kdcache.testing import pca_tail

# Where label_fidelity.py keeps the teacher logits unless told otherwise (its --logits default).
DEFAULT_LOGITS = os.path.join(tempfile.gettempdir(), "kdcache_fid_logits.npz")


def fidelity(z: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """KL(teacher || q) mean and p90, L1 mean, for teacher logits z (N, C) and target probs q (N, C)."""
    lp = torch.log_softmax(torch.as_tensor(z, dtype=torch.float64), 1).numpy()
    # Floor: a target with q = 0 where p > 0 (fp16 rounding of the top-k) would make KL infinite.
    kl = (np.exp(lp) * (lp - np.log(np.maximum(q.astype(np.float64), 1e-12)))).sum(1)
    return {
        "kl": float(kl.mean()),
        "kl_p90": float(np.percentile(kl, 90)),
        "l1": float(np.abs(np.exp(lp) - q).sum(1).mean()),
    }


def tail_bytes(coef: np.ndarray) -> float:
    """Compressed bytes per view of the int8 coefficients, bitshuffled (4-bit values: ~r/2 B)."""
    a = np.ascontiguousarray(coef)
    return len(Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE).encode(a)) / a.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logits", default=DEFAULT_LOGITS, help="npz of label_fidelity.py (A_logits, B_logits)")
    ap.add_argument("--views", type=int, default=0, help="use at most this many views of each set (0: all)")
    ap.add_argument("--k", type=int, default=10, help="classes stored exactly")
    ap.add_argument("--ranks", default="4,8,16,32", help="ranks r of the tail model")
    ap.add_argument("--bits", default="4", help="bits per coefficient")
    args = ap.parse_args()

    path = Path(args.logits)
    if not path.exists():
        sys.exit(
            f"pca_tail.py: no teacher logits at {path}; write them first with "
            f"python benchmarks/studies/label_fidelity.py --logits {path} --ranks ''"
        )
    data = np.load(path)
    n = args.views or None
    za, zb = data["A_logits"][:n].astype(np.float32), data["B_logits"][:n].astype(np.float32)
    c = zb.shape[1]
    print(f"teacher logits from {path}: fit on {len(za)} views of set A, evaluate on {len(zb)} of set B, {c} classes")

    lp, cls = (t.numpy() for t in logits_to_topk(torch.as_tensor(zb), args.k))
    outside = 1.0 - np.exp(lp.astype(np.float64)).sum(1).mean()
    rows = [(f"top-{args.k}, even spread", 0.0, fidelity(zb, topk_to_probs(lp, cls, c)), 0.0)]
    for bits in (int(b) for b in args.bits.split(",") if b):
        for r in (int(x) for x in args.ranks.split(",") if x):
            t0 = time.perf_counter()
            model = pca_tail.fit(za, r=r, bits=bits, k=args.k)
            enc = pca_tail.encode(zb, model, k=args.k)
            seconds = time.perf_counter() - t0
            q = pca_tail.decode(enc, model, c)
            rows.append(
                (f"top-{args.k} + PCA tail r{r} int{bits}", tail_bytes(enc["tail_coef"]), fidelity(zb, q), seconds)
            )
            print(f"{rows[-1][0]}: {seconds:.1f} s", flush=True)

    print()
    print(f"mass outside the top-{args.k}: {outside:.3f} (mean; the tail reshapes it, it does not shrink it)")
    print("| labels | tail B/view | KL mean | KL p90 | L1 mean | fit + encode s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, nbytes, m, seconds in rows:
        print(f"| {name} | {nbytes:.1f} | {m['kl']:.3f} | {m['kl_p90']:.3f} | {m['l1']:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
