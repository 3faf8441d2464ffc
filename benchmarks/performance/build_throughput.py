"""``kdcache build`` throughput against the teacher's own forward throughput, same views, same device.

- **A, teacher forward**: every view is rendered once with kdcache's view engine into memory (not
  timed), in exactly the batches the build forms (``unit_batches`` + ``BuildBatches``),
  then ``TeacherRunner.topk`` (to device, normalise with the teacher's mean/std, forward, log-softmax,
  top-k, back to the host) is timed over those batches: the pure cost of the teacher.
- **B, build**: ``kdcache.teacher_cache.teacher_pass.loop.run_units``, the build's render + teacher + write loop
  (DataLoader workers render while the main process runs the same ``TeacherRunner``; a writer thread
  commits each unit) is timed over the same views into a fresh cache each round. The set-up is
  ``pipeline.run_build``'s (recipe, source, teacher, class map, view engine, manifest,
  ``create_or_open_writer``), done once outside the timer, so interpreter start-up and model
  creation are excluded. ``finalize`` (manifest write) is not timed.

The report gives B ÷ A in views/s per round and its median (goal: >= 0.95 with a ResNet-sized
teacher), the teacher's share of the build's wall time (``BuildStats.teacher_share``), how much
slower the same forward runs inside the build than alone, and the CPU time per view of the main
process and of the DataLoader workers. The first round's cache is checked against A: same view
digests and the same top-k bytes.

A and B are timed strictly alternately, A/B/A/B, so load from other processes hits both alike.
On a CPU device the DataLoader workers that render views compete with the teacher's forward for the
same cores; the report says how many cores the two share.

The teacher is a timm model at random init (``torch.manual_seed(0)``), saved to a temporary .pth and
loaded with ``create_teacher(name, weights)`` as ``kdcache build --teacher-weights`` does: no network.

    python benchmarks/performance/build_throughput.py                          # ResNet-50, 96 images, 3 rounds
    python benchmarks/performance/build_throughput.py --teacher resnet18 --images 64    # quicker
    python benchmarks/performance/build_throughput.py --teacher test_resnet --rounds 2  # smoke test, seconds
    python benchmarks/performance/build_throughput.py --workers 1 --threads 1           # explore core sharing
    python benchmarks/performance/build_throughput.py --device cuda --batch 256 --workers 12 --images 4096
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from kdcache.data.wds_source import open_source
from kdcache.distributed import World
from kdcache.models.teacher import resolve_name
from kdcache.teacher_cache.store import class_dtype, create_or_open_writer, open_cache
from kdcache.teacher_cache.teacher_pass.config import BuildConfig
from kdcache.teacher_cache.teacher_pass.loop import BuildBatches, run_units
from kdcache.teacher_cache.teacher_pass.pipeline import prepare_build
from kdcache.teacher_cache.teacher_pass.runner import TeacherRunner
from kdcache.teacher_cache.teacher_pass.schedule import Unit, all_units, unit_batches
from kdcache.testing.machine import machine_info
from kdcache.testing.synthetic_images import bench_images


# ---- set-up (not timed) -------------------------------------------------------------------------
def save_random_teacher(name: str, num_classes: int, path: Path, seed: int = 0) -> None:
    """The teacher at random init with ``num_classes`` outputs, as a timm state dict (stands in for
    downloaded weights; create_teacher reads the class count from the head)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(resolve_name(name), pretrained=False, num_classes=num_classes)
    torch.save(model.state_dict(), path)


class BuildSetup:
    """What ``pipeline.run_build`` prepares before ``run_units``, for a world of one."""

    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        prep = prepare_build(cfg)
        self.engine, self.manifest, tinfo = prep.engine, prep.manifest, prep.teacher
        num_slots, unit_size, model = prep.num_slots, prep.unit_size, prep.model
        self.units = all_units(cfg.epochs, num_slots, unit_size)
        self.runner = TeacherRunner(model, tinfo.mean, tinfo.std, cfg)
        self.class_dtype = class_dtype(prep.manifest.num_classes)
        self.tinfo = tinfo
        self.world = World(0, 1, 0)

    def build(self, out: Path):
        """B: one timed run_units into a fresh cache at ``out``.

        Returns (BuildStats, wall s, CPU s, where the non-forward time went)."""
        writer = create_or_open_writer(out, self.manifest)
        probe = ProbedRunner(self.runner)
        write_s = []

        def write_unit(epoch: int, unit: int, arrays) -> None:  # on the build's writer thread
            ts = time.perf_counter()
            writer.write_unit_arrays(epoch, unit, arrays)
            write_s.append(time.perf_counter() - ts)

        c0 = _cpu()
        t0 = time.perf_counter()
        stats = run_units(self.engine, probe, self.units, write_unit, self.class_dtype, self.cfg, self.world)
        t1 = time.perf_counter()
        cpu = _cpu(c0)
        writer.finalize()
        return stats, t1 - t0, cpu, {**probe.breakdown(t0, t1), "write": sum(write_s)}


class ProbedRunner:
    """The build's TeacherRunner, recording when each forward starts and ends (nothing else changes)."""

    def __init__(self, runner: TeacherRunner):
        self.runner = runner
        self.calls: list[tuple[float, float]] = []

    def topk(self, images: torch.Tensor):
        t0 = time.perf_counter()
        out = self.runner.topk(images)
        self.calls.append((t0, time.perf_counter()))
        return out

    def breakdown(self, t0: float, t1: float) -> dict[str, float]:
        """Non-forward seconds of a run_units call: before the first forward (worker start-up + first
        batch), between forwards (waiting for views, assembling), after the last (final write, shutdown)."""
        starts, ends = zip(*self.calls, strict=True)
        gaps = sum(s - e for s, e in zip(starts[1:], ends[:-1], strict=True))
        return {"lead": starts[0] - t0, "gaps": gaps, "tail": t1 - ends[-1]}


def pre_render(setup: BuildSetup) -> list[dict]:
    """Every view of the build in memory, in the build's own batches (one process): the dataset
    ``run_units`` feeds its DataLoader, read in order."""
    items, batches = unit_batches(setup.units, setup.cfg.batch_size)
    ds = BuildBatches(setup.engine, [(int(items[b[0], 0]), items[b, 1]) for b in batches])
    out = [ds[i] for i in range(len(ds))]
    if setup.cfg.device.startswith("cuda"):  # the build's DataLoader pins host memory on CUDA
        for b in out:
            b["images"] = b["images"].pin_memory()
    return out


# ---- timing ---------------------------------------------------------------------------------------
def _cpu(base: tuple[float, float] | None = None) -> tuple[float, float]:
    """(CPU s of this process, CPU s of its reaped children: the DataLoader workers), minus ``base``."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = (s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime)
    return now if base is None else (now[0] - base[0], now[1] - base[1])


def teacher_pass(runner: TeacherRunner, batches: list[dict]):
    """A: TeacherRunner.topk over the pre-rendered batches; returns (lp, cls, wall s, CPU s)."""
    c0 = _cpu()
    t0 = time.perf_counter()
    res = [runner.topk(b["images"]) for b in batches]
    wall = time.perf_counter() - t0
    cpu = _cpu(c0)
    return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res]), wall, cpu


def check_cache(out: Path, batches: list[dict], lp: np.ndarray, cls: np.ndarray, class_dtype) -> str:
    """Does the cache B wrote hold A's views (digests) and A's top-k, byte for byte?"""
    block = open_cache(out).load_epoch(0)
    slots = np.concatenate([b["slots"] for b in batches])
    digests = np.concatenate([b["digests"] for b in batches])
    same_views = np.array_equal(block.digest[slots], digests)
    same_cls = np.array_equal(block.topk_class[slots], cls.astype(class_dtype))
    dlp = float(np.abs(block.topk_logprob[slots].astype(np.float32) - lp.astype(np.float32)).max())
    return (
        f"views {'identical' if same_views else 'DIFFER'} (digests), top-k classes "
        f"{'identical' if same_cls else 'DIFFER'}, max |Δ log-prob| {dlp:.3g}"
    )


def warm_up(setup: BuildSetup, batches: list[dict]) -> None:
    """First-call costs outside the timer: a teacher forward, and a short build into no store."""
    setup.runner.topk(batches[0]["images"])
    first = setup.units[0]
    n = min(first.size, setup.cfg.batch_size)
    run_units(
        setup.engine,
        setup.runner,
        [Unit(first.epoch, first.index, first.start, n)],
        lambda *_: None,
        setup.class_dtype,
        setup.cfg,
        setup.world,
    )


# ---- report -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96, help="JPEGs in the synthetic ImageFolder (even)")
    ap.add_argument("--classes", type=int, default=10, help="class folders = teacher outputs")
    ap.add_argument("--teacher", default="resnet50", help="timm model name (random init, local weights file)")
    ap.add_argument("--size", type=int, default=224, help="view size (the build's --image-size)")
    ap.add_argument("--batch", type=int, default=32, help="views per teacher forward (even)")
    ap.add_argument("--workers", type=int, default=2, help="the build's DataLoader workers")
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds; each round = one full pass of each")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help="as kdcache build")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: CUDA")
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--format", dest="backend", default="zarr", choices=("zarr", "wds"))
    ap.add_argument("--unit-size", type=int, default=BuildConfig.unit_size, help="views per work unit")
    ap.add_argument("--threads", type=int, help="torch threads of the main process (default: torch's own)")
    ap.add_argument("--data", type=Path, help="use this ImageFolder instead of generating one")
    args = ap.parse_args(argv)
    if args.batch % 2 or args.images % 2 or args.images < args.batch:
        ap.error("--batch and --images must be even, and --images >= --batch")
    if args.threads:
        torch.set_num_threads(args.threads)

    print("\n".join(machine_info()))
    if args.device.startswith("cuda"):
        print(f"device  : {torch.cuda.get_device_name(torch.device(args.device))}")
    with tempfile.TemporaryDirectory(prefix="kdcache-bench-") as tmp_s:
        tmp = Path(tmp_s)
        root = bench_images(args.data, tmp, args.images, args.classes)
        num_classes = len(open_source(root).classes)
        weights = tmp / "teacher.pth"
        save_random_teacher(args.teacher, num_classes, weights)
        cfg = BuildConfig(
            teacher=args.teacher,
            data=str(root),
            out=str(tmp / "cache"),
            format=args.backend,
            epochs=1,  # one pass over --images; without it the recipe's training epochs (610) would be built
            topk=min(args.topk, num_classes),
            image_size=args.size,
            teacher_weights=str(weights),
            batch_size=args.batch,
            workers=args.workers,
            device=args.device,
            amp=args.amp,
            channels_last=args.channels_last,
            unit_size=args.unit_size,
            progress=False,
        )
        setup = BuildSetup(cfg)
        t0 = time.perf_counter()
        batches = pre_render(setup)
        render_s = time.perf_counter() - t0
        views = sum(int(b["images"].shape[0]) for b in batches)
        runner = setup.runner
        print(
            f"teacher : {setup.tinfo.model} at random init from a local .pth, {setup.tinfo.num_classes} classes, "
            f"top-{cfg.topk}, amp {cfg.amp_dtype()}, channels_last {runner.channels_last}, on {runner.device}"
        )
        print(
            f"setup   : {views} views at {args.size}px in {len(batches)} batches of <= {args.batch}, "
            f"{len(setup.units)} unit(s) of <= {setup.manifest.unit_size} views, {cfg.format} store, "
            f"{args.rounds} rounds A/B/A/B"
        )
        print(
            f"          build: {args.workers} DataLoader workers render (1 torch thread each); main process "
            f"runs the teacher with {torch.get_num_threads()} torch threads"
        )
        if runner.device.type == "cpu":
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:
                cores = os.cpu_count() or 0
            print(
                f"          CPU device: rendering competes with the forward for the same {cores} cores "
                f"({args.workers} workers + {torch.get_num_threads()} teacher threads)"
            )
        print(f"          pre-render for A (one process, not timed): {1e3 * render_s / views:.1f} ms/view")

        warm_up(setup, batches)
        rows = []
        check = ""
        for r in range(args.rounds):
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            lp, cls, a_wall, a_cpu = teacher_pass(runner, batches)
            out = tmp / f"cache-{r}"
            stats, b_wall, b_cpu, where = setup.build(out)
            if r == 0:
                check = check_cache(out, batches, lp, cls, setup.class_dtype)
            bottleneck = stats.bottleneck_report()  # the last round's, as `kdcache build` reports it
            shutil.rmtree(out, ignore_errors=True)
            rows.append(
                {
                    "round": r,
                    "load": load,
                    "A": views / a_wall,
                    "B": stats.views / b_wall,
                    "share": stats.teacher_share,
                    "slow": stats.teacher_seconds / a_wall,
                    **where,
                    "a_cpu": 1e3 * a_cpu[0] / views,
                    "b_main": 1e3 * b_cpu[0] / stats.views,
                    "b_work": 1e3 * b_cpu[1] / stats.views,
                    "cpu_ratio": a_cpu[0] / views / ((b_cpu[0] + b_cpu[1]) / stats.views),
                }
            )

    print()
    cols = (
        ("round", "round", 6, "{}"),
        ("load", "load", 5, "{:.1f}"),
        ("A", "A teacher views/s", 17, "{:.2f}"),
        ("B", "B build views/s", 15, "{:.2f}"),
        ("ratio", "B/A", 6, "{:.3f}"),
        ("steady", "B/A steady", 10, "{:.3f}"),
        ("share", "teacher share of B", 18, "{:.1%}"),
        ("slow", "fwd in B / A", 12, "{:.3f}"),
        ("lead", "B lead s", 8, "{:.2f}"),
        ("gaps", "B gaps s", 8, "{:.2f}"),
        ("tail", "B tail s", 8, "{:.2f}"),
        ("write", "B write s", 9, "{:.2f}"),
        ("a_cpu", "A CPU ms/view", 13, "{:.1f}"),
        ("b_main", "B main CPU ms/view", 18, "{:.1f}"),
        ("b_work", "B workers CPU ms/view", 21, "{:.1f}"),
        ("cpu_ratio", "B/A per CPU-s", 13, "{:.3f}"),
    )
    for row in rows:
        row["ratio"] = row["B"] / row["A"]
        # Per-run fixed costs (lead, tail) amortised away, as over a real build's ~10^6 views.
        b_wall = views / row["B"]
        row["steady"] = b_wall / (b_wall - row["lead"] - row["tail"]) * row["ratio"]
    print("  ".join(f"{h:>{w}}" for _, h, w, _ in cols))
    for row in rows:
        print("  ".join(f"{f.format(row[k]):>{w}}" for k, _, w, f in cols))
    med = {k: statistics.median(row[k] for row in rows) for k, *_ in cols[1:]}
    print("  ".join(f"{'median' if k == 'round' else f.format(med[k]):>{w}}" for k, _, w, f in cols))
    print(
        f"\nbuild / teacher forward, views/s: {med['ratio']:.3f}x "
        f"(median of per-round ratios; goal >= 0.95 with a ResNet-sized teacher)"
    )
    print(f"  without the per-run lead and tail (a long build's steady state): {med['steady']:.3f}x (median)")
    print(
        f"build / teacher forward, views per CPU-second: {med['cpu_ratio']:.3f}x "
        "(main process + workers; OpenMP spin-waits count as CPU, so this moves with other load too)"
    )
    print(f"teacher forward share of the build: {med['share']:.1%} (BuildStats.teacher_share, median)")
    print(f"bottleneck (last round, BuildStats.bottleneck_report): {bottleneck}")
    print(
        "B lead = run_units start to first forward (worker start-up, first batch rendered); gaps = between "
        "forwards (waiting for views); tail = after the last forward (final unit write, worker shutdown); "
        "write = time in write_unit on the writer thread (overlaps forwards except for the last unit)"
    )
    print(f"cache check (round 0 vs A): {check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
