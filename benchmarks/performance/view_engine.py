"""Views/s of kdcache's view engine against timm's own training input pipeline, on the same JPEGs.

kdcache: ``PairBatchDataset`` (decode each source image once per batch + keyed sampling or replay +
render + Mixup/CutMix pair + digest + param record) through a torch DataLoader, in two orders:
  build: the epoch's pairs in slot order, cut into batches of consecutive pairs (as the build
         schedules whole work units); params sampled.
  train: rank 0 of a simulated world of 8: each step's global batch of 8 x --batch views, of which
         rank r takes the pairs j = r (mod 8) (the trainer's placement, kdcache.student.batch.process_pairs);
         stored records replayed.
timm:    ``ImageDataset`` with ``create_transform(224, is_training=True, auto_augment='rand-m7-mstd0.5',
interpolation='random', use_prefetcher=True)`` (uint8 output) and ``FastCollateMixup`` in 'pair'
mode as collate: timm's real training loader path, minus the on-device normalisation that both
pipelines leave to the GPU.

Both run with the same number of DataLoader workers, batch size (in views) and images; the two are
timed alternately (build, timm, train, timm, ...), and the median of the per-round ratios is
reported, so load from other processes on a shared machine hits all sides alike.

CPU time: user + sys of the main process (time.process_time) plus that of each DataLoader worker
(from /proc/<pid>/stat, read before and after each pass; workers are persistent, so they are alive
to be read, which RUSAGE_CHILDREN, counting only reaped children, would miss).

    python benchmarks/performance/view_engine.py [--images N] [--workers W] [--rounds R] [--batch B]
    python benchmarks/performance/view_engine.py --workers 0          # single process
    python benchmarks/performance/view_engine.py --breakdown          # also per-stage ms/view, one process
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import FastCollateMixup, ImageDataset, create_transform
from torch.utils.data import DataLoader

from kdcache.data import ImageFolderSource
from kdcache.recipe import AugmentConfig
from kdcache.testing.machine import machine_info, proc_cpu_seconds
from kdcache.testing.synthetic_images import bench_images, make_imagefolder
from kdcache.views import PairBatchDataset, ViewEngine, keep_collated


# ---- the two pipelines --------------------------------------------------------------------------
def timm_loader(root: Path, batch: int, workers: int, num_classes: int, size: int) -> DataLoader:
    transform = create_transform(
        size, is_training=True, auto_augment="rand-m7-mstd0.5", interpolation="random", use_prefetcher=True
    )
    collate = FastCollateMixup(
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        prob=1.0,
        switch_prob=0.5,
        mode="pair",
        label_smoothing=0.1,
        num_classes=num_classes,
    )
    ds = ImageDataset(str(root), transform=transform)
    return DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0
    )


class TiledSource:
    """An ImageSource of ``size`` samples whose sample i is image ``i % len(source)``.

    Lets the epoch plan have a real dataset's size (its per-pair cost grows with it) while the pass
    decodes only the benchmark's images.
    """

    def __init__(self, source: ImageFolderSource, size: int):
        self.source, self.size = source, size

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def fingerprint(self) -> str:
        return f"{self.source.fingerprint}x{self.size}"

    def __len__(self) -> int:
        return self.size

    def label(self, sample_id: int) -> int:
        return self.source.label(sample_id % len(self.source))

    def name(self, sample_id: int) -> str:
        return self.source.name(sample_id % len(self.source))

    def open(self, sample_id: int) -> Image.Image:
        return self.source.open(sample_id % len(self.source))


def kdcache_engine(root: Path, size: int, plan_size: int) -> ViewEngine:
    source = ImageFolderSource(root)
    if plan_size > len(source):
        source = TiledSource(source, plan_size)
    return ViewEngine(source, AugmentConfig(image_size=size), seed=0)


def build_batches(num_pairs: int, batch: int) -> list[np.ndarray]:
    """Build order: pairs 0.. in slot order, cut into batches of batch // 2 consecutive pairs."""
    return [np.arange(i, min(i + batch // 2, num_pairs)) for i in range(0, num_pairs, batch // 2)]


def train_batches(views: int, rank_batch: int, world: int = 8, rank: int = 0) -> list[np.ndarray]:
    """Training order: rank ``rank``'s batches; step t's global batch is pairs
    [t * P, (t + 1) * P), P = world * rank_batch // 2, and the rank takes those with j = rank (mod world)."""
    per_step = world * rank_batch // 2
    steps = max(1, views // rank_batch)
    return [t * per_step + np.arange(rank, per_step, world) for t in range(steps)]


def sampled_records(engine: ViewEngine, epoch: int, batches: list[np.ndarray]) -> np.ndarray:
    """The epoch's records as a build would have stored them (only the pairs in ``batches`` filled)."""
    from kdcache.views import params as P

    records = np.zeros((engine.plan(epoch).num_slots, engine.record_width), np.uint16)
    for pair in np.concatenate(batches).tolist():
        params = engine.sample_pair(epoch, pair)  # header reads only
        records[2 * pair : 2 * pair + 2] = [P.encode(v, engine.n_ops) for v in params]
    return records


def kdcache_loader(engine: ViewEngine, batches: list[np.ndarray], workers: int, records=None) -> DataLoader:
    ds = PairBatchDataset(engine, 0, batches, records=records)
    return DataLoader(
        ds, batch_size=None, num_workers=workers, collate_fn=keep_collated, persistent_workers=workers > 0
    )


def _views(b) -> int:
    return int(b["images"].shape[0]) if isinstance(b, dict) else int(b[0].shape[0])


def _cpu_seconds(it) -> float:
    """CPU time of this process plus the iterator's DataLoader workers."""
    pids = [w.pid for w in getattr(it, "_workers", [])]
    return time.process_time() + sum(proc_cpu_seconds(p) for p in pids)


def timed_pass(loader: DataLoader, max_batches: int | None = None) -> tuple[int, float, float]:
    """One pass: (views, wall seconds, CPU seconds of the main process and the workers)."""
    it = iter(loader)  # persistent workers: resuming drains leftovers here, outside the timer
    n = 0
    c0, t0 = _cpu_seconds(it), time.perf_counter()
    for k, b in enumerate(it):
        n += _views(b)
        if max_batches is not None and k + 1 >= max_batches:
            break
    t1 = time.perf_counter()
    return n, t1 - t0, _cpu_seconds(it) - c0


# ---- per-stage breakdown (one process, no DataLoader) ---------------------------------------------
def breakdown(root: Path, n: int, size: int, num_classes: int, batch: int) -> list[tuple[str, float, float]]:
    """Total ms per view of each stage of both pipelines, interleaved pair by pair.

    kdcache in build order: each source image decoded once per batch of ``batch // 2`` consecutive
    pairs, as ``ViewEngine.render_batch`` does.
    """
    import random

    from torchvision.transforms import functional as TF

    from kdcache.data.rgb import to_rgb
    from kdcache.views import params as P
    from kdcache.views.randaug import apply_ops
    from kdcache.views.render import digest, mix_pair_into, render_image

    torch.set_num_threads(1)  # as in a DataLoader worker
    src = ImageFolderSource(root)
    engine = ViewEngine(src, AugmentConfig(image_size=size), seed=0)
    plan = engine.plan(0)
    ttf = create_transform(
        size, is_training=True, auto_augment="rand-m7-mstd0.5", interpolation="random", use_prefetcher=True
    ).transforms
    rrc, flip, ra, to_t = ttf[0], ttf[1], ttf[2], ttf[-1]
    mixer = FastCollateMixup(mixup_alpha=0.2, cutmix_alpha=1.0, mode="pair", num_classes=num_classes)
    k: dict[str, float] = {}
    t: dict[str, float] = {}

    def tick(d, name, t0):
        t1 = time.perf_counter()
        d[name] = d.get(name, 0.0) + t1 - t0
        return t1

    warm = 4  # pairs rendered before the clocks start (lazy imports, first-call costs)
    pairs = min(n, plan.num_slots) // 2

    decoded: dict[int, Image.Image] = {}  # this batch's decoded images

    def run_kdcache(pair: int, check: bool) -> None:
        """kdcache, stage by stage: what ViewEngine.render_batch does (checked during the warm-up)."""
        if pair % (batch // 2) == 0:
            decoded.clear()
        t0 = time.perf_counter()
        ims = [decoded[i] if i in decoded else decoded.setdefault(i, to_rgb(src.open(i))) for i in pair_ids(pair)]
        t0 = tick(k, "decode (open + RGB)", t0)
        params = engine._sample(plan, pair, [im.size for im in ims])
        t0 = tick(k, "sample params", t0)
        outs = []
        for im, p in zip(ims, params, strict=True):
            q = p.image
            res = Image.Resampling.BICUBIC if q.bicubic else Image.Resampling.BILINEAR
            o = im.crop((q.left, q.top, q.left + q.width, q.top + q.height)).resize((size, size), res)
            t0 = tick(k, "crop + resize", t0)
            if q.hflip:
                o = o.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            t0 = tick(k, "flip", t0)
            o = apply_ops(o, q.ops, engine.spec)
            t0 = tick(k, "RandAugment", t0)
            outs.append(np.asarray(o, dtype=np.uint8))
            t0 = tick(k, "to array", t0)
        buf = np.empty((2, size, size, 3), np.uint8)
        mix_pair_into(outs[0], outs[1], params[0].mix, buf)
        t0 = tick(k, "mix + stack", t0)
        [digest(buf[0]), digest(buf[1])]
        np.stack([P.encode(p, engine.n_ops) for p in params])
        tick(k, "digest + param record", t0)
        if check:
            for im, p, o in zip(ims, params, outs, strict=True):
                if not np.array_equal(o, render_image(im, p.image, size, engine.spec)):
                    raise RuntimeError("breakdown stages no longer mirror kdcache.views.render.render_image")

    def run_timm(pair: int) -> None:
        """timm's transforms and FastCollateMixup on the same two images."""
        outs = []
        for i in pair_ids(pair):
            t0 = time.perf_counter()
            with open(src.path(i), "rb") as f:
                im = Image.open(f).convert("RGB")
            t0 = tick(t, "decode (open + RGB)", t0)
            i_, j_, h_, w_ = rrc.get_params(im, rrc.scale, rrc.ratio)
            interp = random.choice(rrc.interpolation) if isinstance(rrc.interpolation, tuple) else rrc.interpolation
            t0 = tick(t, "sample params", t0)  # crop + interpolation; flip/RA/mix draw inside their stages
            o = TF.resized_crop(im, i_, j_, h_, w_, list(rrc.size), interp)
            t0 = tick(t, "crop + resize", t0)
            o = flip(o)
            t0 = tick(t, "flip", t0)
            o = ra(o)
            t0 = tick(t, "RandAugment", t0)
            outs.append((to_t(o), 0))
            t0 = tick(t, "to array", t0)
        mixer(outs)
        tick(t, "mix + stack", t0)  # timm has no digest / param-record stage

    def pair_ids(pair: int) -> list[int]:
        return [int(plan.sample_ids[s]) for s in plan.pair_slots(pair)]

    for pair_i in range(-warm, pairs):
        if pair_i == 0:
            k.clear()
            t.clear()
        pair = pair_i % pairs
        if pair_i % 2:  # alternate which pipeline goes first
            run_timm(pair)
            run_kdcache(pair, check=pair_i < 0)
        else:
            run_kdcache(pair, check=pair_i < 0)
            run_timm(pair)
    nviews = 2 * pairs
    return [(name, 1e3 * k[name] / nviews, 1e3 * t.get(name, 0.0) / nviews) for name in k]


# ---- report -------------------------------------------------------------------------------------
def _median_row(rows: list[tuple]) -> tuple:
    return tuple(statistics.median(c) for c in zip(*rows, strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512, help="JPEGs in the synthetic ImageFolder (even)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for all pipelines (0 = in-process)")
    ap.add_argument("--rounds", type=int, default=8, help="rounds; each round = one full pass of each pipeline")
    ap.add_argument(
        "--batch", type=int, default=128, help="views per batch (even): build batches, timm, and one rank's train batch"
    )
    ap.add_argument("--world", type=int, default=8, help="simulated world size of the training order")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument(
        "--plan-size",
        type=int,
        default=1_281_167,
        help="lay kdcache's epoch plan out for this many samples (default: ImageNet-1k train), each mapped "
        "onto one of the --images files; 0 = plan over the files only",
    )
    ap.add_argument("--data", type=Path, help="use this ImageFolder instead of generating one")
    ap.add_argument("--breakdown", action="store_true", help="also print per-stage ms/view (one process)")
    # Before the two orders, --replay switched kdcache to replayed records; the train order always does now.
    ap.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay:
        print("note    : --replay is implied: the train order replays stored records, the build order samples")
    if args.batch % 2 or args.images % 2 or args.images < args.batch:
        ap.error("--batch and --images must be even, and --images >= --batch")
    if args.workers == 0:
        torch.set_num_threads(1)  # one core each: compare per-core cost

    print("\n".join(machine_info()))
    with tempfile.TemporaryDirectory(prefix="kdcache-bench-") as tmp:
        root = bench_images(args.data, Path(tmp), args.images, args.classes)
        num_classes = len(ImageFolderSource(root).classes)
        engine = kdcache_engine(root, args.size, args.plan_size)
        if engine.plan(0).num_pairs * 2 < args.world * args.images:
            ap.error("--plan-size too small for the training order: needs >= world x images slots")
        build = build_batches(args.images // 2, args.batch)
        train = train_batches(args.images, args.batch, args.world)
        loaders = {
            "build": kdcache_loader(engine, build, args.workers),
            "timm": timm_loader(root, args.batch, args.workers, num_classes, args.size),
            "train": kdcache_loader(engine, train, args.workers, sampled_records(engine, 0, train)),
        }
        print(
            f"setup   : {args.workers} DataLoader workers, batch {args.batch} views, {args.size}px, "
            f"{args.rounds} rounds (build, timm, train, timm), each pass {args.images} views"
        )
        print(f"          kdcache build: slots 0..{args.images - 1} in order, params sampled")
        print(
            f"          kdcache train: rank 0 of {args.world}, global batch {args.world * args.batch} views, "
            f"{len(train)} steps, stored records replayed"
        )
        if args.plan_size > args.images:
            print(f"          kdcache plan laid out for {args.plan_size} samples, mapped onto the {args.images} files")
        # Warm-up: start workers, fill page cache, build RandAugment ops and the epoch plan.
        for ld in loaders.values():
            timed_pass(ld, max_batches=max(1, args.workers))
        rows = []  # (round, load, views/s: build, train, timm; CPU ms/view: build, train, timm)
        for r in range(args.rounds):
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            rate: dict[str, float] = {}
            cpu: dict[str, list[float]] = {"build": [], "train": [], "timm": []}
            walls: dict[str, list[float]] = {"build": [], "train": [], "timm": []}
            for name in ("build", "timm", "train", "timm"):  # every kdcache pass next to a timm pass
                n, wall, cpu_s = timed_pass(loaders[name])
                walls[name].append(n / wall)
                cpu[name].append(1e3 * cpu_s / n)
            rate = {k: statistics.mean(v) for k, v in walls.items()}
            ms = {k: statistics.mean(v) for k, v in cpu.items()}
            rows.append((r, load, rate["build"], rate["train"], rate["timm"], ms["build"], ms["train"], ms["timm"]))
        del loaders

    print()
    head = ("round", "load", "build v/s", "train v/s", "timm v/s", "build CPU ms/v", "train CPU ms/v", "timm CPU ms/v")
    widths = (6, 5, 10, 10, 9, 14, 14, 13)
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(fmt.format(*head))
    for r, load, *vals in rows:
        print(fmt.format(r, f"{load:.1f}", *(f"{v:.1f}" for v in vals[:3]), *(f"{v:.2f}" for v in vals[3:])))
    med = _median_row([row[2:] for row in rows])
    print(fmt.format("median", "", *(f"{v:.1f}" for v in med[:3]), *(f"{v:.2f}" for v in med[3:])))
    wall_b = statistics.median(row[2] / row[4] for row in rows)
    wall_t = statistics.median(row[3] / row[4] for row in rows)
    cpu_b = statistics.median(row[7] / row[5] for row in rows)
    cpu_t = statistics.median(row[7] / row[6] for row in rows)
    print(f"\nkdcache / timm, wall-clock views/s: build {wall_b:.3f}x, train {wall_t:.3f}x (median of round ratios)")

    if args.breakdown:
        with tempfile.TemporaryDirectory(prefix="kdcache-bench-") as tmp:
            root = args.data or Path(tmp) / "train"
            if args.data is None:
                make_imagefolder(root, min(args.images, 256), args.classes)
            stages = breakdown(root, min(args.images, 256), args.size, num_classes, args.batch)
        print(f"\n{'stage (one process)':<28} {'kdcache ms/view':>15} {'timm ms/view':>13}")
        for name, a, b in stages:
            print(f"{name:<28} {a:>15.3f} {b:>13.3f}")
        print(f"{'total':<28} {sum(s[1] for s in stages):>15.3f} {sum(s[2] for s in stages):>13.3f}")
    print(f"views per CPU-second, kdcache ÷ timm: build {cpu_b:.2f}, train {cpu_t:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
