"""Adding a teacher to existing views against building a new cache for it, same machine, same inputs.

A cache of teacher 1 is built once (not timed). Then, alternately per round:

- **add**: ``kdcache build --teacher T2 --out CACHE`` on a copy of that cache: every view is re-rendered
  from its stored params, its digest checked, and teacher 2 run on it (a layer, docs/cache-format.md);
- **new**: ``kdcache build --teacher T2 --out NEW``: the views sampled and rendered afresh, teacher 2
  run on them, everything written.

Both run in-process through the CLI (``build_and_summarise``), same data, same second teacher, same
batch size, workers and device; the wall time of each build call is taken, model creation included in
both. Teachers are timm models at seeded random init saved to .pth (no network); the images are
scikit-learn's sample photos cropped into an ImageFolder.

    python benchmarks/performance/add_teacher.py                                  # test_resnet, 60 images, 3 rounds
    python benchmarks/performance/add_teacher.py --teacher2 resnet18 --images 256 --image-size 160
    python benchmarks/performance/add_teacher.py --device cuda --teacher2 resnet50 --images 2048 --workers 8
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher1", default="test_resnet")
    ap.add_argument("--teacher2", default="test_efficientnet")
    ap.add_argument("--images", type=int, default=60, help="images in the dataset (3 classes)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    # Imported after parsing, so that --help does not wait for torch.
    from kdcache.cli.build import build_and_summarise
    from kdcache.teacher_cache.teacher_pass.config import BuildConfig
    from kdcache.testing.fixtures import write_dataset, write_teacher

    tmp = Path(tempfile.mkdtemp(prefix="kdcache-add-teacher-"))
    try:
        data = write_dataset(tmp / "data", ["ant", "bee", "cat"], per_class=max(1, args.images // 3))
        w1 = write_teacher(tmp / "t1.pth", 3, arch=args.teacher1, seed=0)
        w2 = write_teacher(tmp / "t2.pth", 3, arch=args.teacher2, seed=1)

        def cfg(teacher: str, weights: Path, out: Path) -> BuildConfig:
            return BuildConfig(
                teacher=teacher,
                teacher_weights=str(weights),
                data=str(data),
                out=str(out),
                image_size=args.image_size,
                epochs=args.epochs,
                batch_size=args.batch_size,
                workers=args.workers,
                device=args.device,
                unit_size=1024,
                topk=3,
                progress=False,
            )

        base = tmp / "base"
        build_and_summarise(cfg(args.teacher1, w1, base))
        add_s, new_s = [], []
        for r in range(args.rounds):
            cache = tmp / f"add{r}"
            shutil.copytree(base, cache)
            t = time.perf_counter()
            summary = build_and_summarise(cfg(args.teacher2, w2, cache))
            add_s.append(time.perf_counter() - t)
            assert "added teacher" in summary, summary
            t = time.perf_counter()
            build_and_summarise(cfg(args.teacher2, w2, tmp / f"new{r}"))
            new_s.append(time.perf_counter() - t)
            print(f"round {r}: add {add_s[-1]:.2f} s, new cache {new_s[-1]:.2f} s", file=sys.stderr)
        add, new = statistics.median(add_s), statistics.median(new_s)
        print(" ".join(["python", *sys.argv]))
        print(
            f"teacher 2 {args.teacher2} on {args.epochs} epoch(s) of {3 * max(1, args.images // 3)} images at "
            f"{args.image_size}px, {args.device}, batch {args.batch_size}, {args.workers} worker(s), "
            f"median of {args.rounds} rounds:"
        )
        print(f"  add a teacher layer   {add:.2f} s")
        print(f"  build a new cache     {new:.2f} s")
        print(f"  add / new             {add / new:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
