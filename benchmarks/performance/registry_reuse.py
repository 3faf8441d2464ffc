"""What a repeated ``kdcache build`` costs once the registry holds its cache.

Times whole ``kdcache build`` processes into a fresh cache root (``--cache-root``, no ``--out``):

- **first**: builds the cache (render + teacher forward + write);
- **reuse**: the same command again (``reused ... the teacher did not run``), ``--rounds`` times;
- **start-up**: ``python -c "import kdcache.teacher_cache.teacher_pass.pipeline"``, the floor of any build process.

A reused build still loads the teacher (its weights sha256 is over the model's state dict) and scans
the dataset (its fingerprint), because both are part of the key. The report gives every figure's
median and the ratio reuse ÷ first. The teacher is a timm model at random init saved to a local
file, as ``--teacher-weights`` loads it: no network.

    python benchmarks/performance/registry_reuse.py                              # ResNet-50 teacher, 512 images
    python benchmarks/performance/registry_reuse.py --teacher resnet18 --images 128 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

from kdcache.testing.machine import machine_info
from kdcache.testing.synthetic_images import bench_images


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return elapsed, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, help="An ImageFolder to use instead of synthetic JPEGs.")
    args = ap.parse_args()
    for line in machine_info():
        print(line)
    with tempfile.TemporaryDirectory(prefix="kdcache-registry-bench-") as tmp:
        tmp_path = Path(tmp)
        data = bench_images(args.data, tmp_path, args.images, 10)
        torch.manual_seed(0)
        weights = tmp_path / "teacher.pth"
        torch.save(timm.create_model(args.teacher, pretrained=False, num_classes=10).state_dict(), weights)
        # --epochs 1: without it a build makes the recipe's training epochs (610).
        build = [
            sys.executable, "-m", "kdcache", "build", "--teacher", args.teacher, "--teacher-weights", str(weights),
            "--data", str(data), "--cache-root", str(tmp_path / "root"), "--image-size", str(args.image_size),
            "--workers", str(args.workers), "--batch-size", "32", "--epochs", "1", "--no-progress",
        ]  # fmt: skip
        first, err = timed(build)
        assert "new cache" in err, err
        reuse, startup = [], []
        for _ in range(args.rounds):
            s, err = timed(build)
            assert "reused" in err and "teacher did not run" in err, err
            reuse.append(s)
            startup.append(timed([sys.executable, "-c", "import kdcache.teacher_cache.teacher_pass.pipeline"])[0])
    r, s = statistics.median(reuse), statistics.median(startup)
    print(f"teacher {args.teacher}, {args.images} images at {args.image_size}px, 1 epoch")
    print(f"first build   {first:8.2f} s")
    print(f"reused build  {r:8.2f} s  (median of {args.rounds}: {', '.join(f'{x:.2f}' for x in reuse)})")
    print(f"start-up      {s:8.2f} s  (interpreter + imports)")
    print(f"reuse / first {r / first:8.3f}")


if __name__ == "__main__":
    main()
