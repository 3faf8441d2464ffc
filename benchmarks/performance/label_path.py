"""Per-step cost of the soft labels in cached training, format 1 (top-10) vs format 2 (top-10 + tail 10).

What mode ``cached`` does with the labels every step: gather the batch's rows from an in-memory epoch
block (``CacheBatchSource`` indexes ``block.topk_logprob[rows]``) and rebuild the 1000-class targets
(``TeacherTarget.from_topk``). Format 2 only widens the rows (k + m columns, decoded when the epoch was
loaded: ``benchmarks/performance/epoch_load.py --tail-classes 10`` times that). Rows are synthetic sorted log-probs
of an ImageNet-sized block; the timing does not depend on their values.

    python benchmarks/performance/label_path.py [--rows 1281166] [--batches 16,128]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from kdcache.student.targets import TeacherTarget

C, K, M = 1000, 10, 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_281_166, help="rows of the epoch block")
    ap.add_argument("--batches", default="16,128", help="per-process batch sizes")
    ap.add_argument("--steps", type=int, default=200, help="steps per timing; best of 7")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = np.random.default_rng(0)
    lp = -np.sort(g.gamma(2.0, 2.0, (args.rows, K + M)), axis=1).astype(np.float16)
    cls = np.argsort(g.random((args.rows, K + M)), axis=1).astype(np.int16) * (C // (K + M))
    blocks = {"format 1": (np.ascontiguousarray(lp[:, :K]), np.ascontiguousarray(cls[:, :K])), "format 2": (lp, cls)}
    for batch in (int(b) for b in args.batches.split(",")):
        best = {}
        for name, (a, c) in blocks.items():
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    rows = g.integers(0, args.rows, batch)
                    TeacherTarget.from_topk(torch.from_numpy(a[rows]), torch.from_numpy(c[rows]), C)
                times.append((time.perf_counter() - t0) / args.steps)
            best[name] = min(times)
            print(f"batch {batch:4d} {name}: {best[name] * 1e6:7.1f} us per step (best of 7 x {args.steps})")
        print(f"batch {batch:4d} format 2 / format 1: {best['format 2'] / best['format 1']:.3f}")


if __name__ == "__main__":
    main()
