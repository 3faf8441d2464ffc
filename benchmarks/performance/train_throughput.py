"""Student training throughput (images/s) of ``kdcache train`` in its three modes, and of timm's own
online distillation, on the same machine, data and views.

- **none**   plain training (CE on the mixed, smoothed target); views replayed from the cache
             (``CacheBatchSource(with_topk=False)``), as ``kdcache train --kd none`` does.
- **cached** kdcache's product: the same views plus the stored teacher top-k
             (``CacheBatchSource(with_topk=True)``), KD loss from the rebuilt distribution. With
             ``--format-version 2`` its cache is format 2 and it reads the top-k plus the tail.
- **cached-v2** (only when asked for in ``--modes``) cached on a second cache of the same views built
             as format version 2 (top-k plus ``--tail-classes`` tail classes with 4-bit codes), so
             one run compares reading version 1 (cached) with version 2 (cached-v2) on the same data.
- **online** the teacher (``OnlineTeacher``) runs on every batch, on the same views.
- **timm**   ``timm.task.LogitDistillationTask`` with the same student (same init), teacher weights,
             batch, views, loss weights (0.8 KD + 0.2 soft-target CE, T=1), LAMB, clip and EMA, in
             the order of timm's train.py step (task forward, backward, clip, step, lr, EMA).

The kdcache modes run the real trainer's per-step code, ``Trainer._step`` (batch check, per-step
seed, lr schedule, normalise, forward, ``KDLoss``, backward, clip, LAMB step, EMA update), on a
``Trainer`` set up as ``kdcache train`` sets it up (``run.resolve_recipe`` over the cache's recipe;
the online teacher from the weights file via ``create_teacher``). Throughput includes data loading:
each timed run pulls its batches from a fresh ``CacheBatchSource.epoch_batches`` iterator (DataLoader
workers re-render and digest-check every view), takes ``--warmup`` untimed steps, then times
``--steps`` steps.

Before timing, a small one-epoch cache is built with ``kdcache.teacher_cache.teacher_pass.pipeline.run_build``
over synthetic ImageNet-like JPEGs (``kdcache.testing.synthetic_images.make_imagefolder``; folders renamed
to ImageNet WordNet ids so that the 1000-class teacher maps them) with a teacher at random init saved to a
temporary .pth and passed as ``teacher_weights``, as a user passes ``--teacher-weights`` (no network
needed). With mode cached-v2 a second cache (format 2) is built from the same data and teacher; the two
hold the same views. The builds are not timed.

Modes run in rounds; each round runs every mode once, in an order rotated from round to round, so
load from other processes hits every mode alike. The report gives per-round images/s, medians, and
the medians of the per-round ratios.

    B=benchmarks/performance/train_throughput.py
    python $B                                   # ResNet-50 / BEiT-base, CPU defaults
    python $B --rounds 5 --steps 6
    python $B --device cuda --amp bf16 --channels-last --batch 128 --workers 12
    python $B --student resnet18 --teacher vit_tiny_patch16_224 --batch 8            # quick
    python $B --modes none,cached,cached-v2 --tail-classes 10                        # reading v1 vs v2
    python $B --format-version 2 --tail-classes 10                                   # cached reads v2
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.data import ImageNetInfo
from timm.loss import SoftTargetCrossEntropy
from timm.task import LogitDistillationTask
from timm.utils import dispatch_clip_grad

from kdcache.models.normalize import Normalize
from kdcache.models.online_teacher import OnlineTeacher
from kdcache.models.precision import amp_dtype
from kdcache.models.student import create_student
from kdcache.models.teacher import create_teacher, resolve_name
from kdcache.student.args import TrainArgs, resolve_recipe
from kdcache.student.cache_source import CacheBatchSource
from kdcache.student.ema import set_total_updates
from kdcache.student.loss import KDLoss, mixed_smooth_target
from kdcache.student.optim import create_optimizer
from kdcache.student.schedule import create_scheduler
from kdcache.student.targets import TeacherTarget
from kdcache.student.trainer import RunOptions, Trainer
from kdcache.teacher_cache.store import open_cache
from kdcache.teacher_cache.teacher_pass.config import DEFAULT_TAIL_CLASSES, BuildConfig
from kdcache.teacher_cache.teacher_pass.pipeline import prepare_build, run_build
from kdcache.testing.machine import machine_info, proc_cpu_seconds
from kdcache.testing.synthetic_images import make_imagefolder
from kdcache.views.replay import open_replay

MODES = ("none", "cached", "cached-v2", "online", "timm")
DEFAULT_MODES = ("none", "cached", "online", "timm")  # cached-v2 builds a second cache: only when asked for
SHORT = {"none": "n", "cached": "c", "cached-v2": "c2", "online": "o", "timm": "t"}  # the report's order column


# ---- set-up (not timed) -------------------------------------------------------------------------
def make_data(root: Path, n: int, num_classes: int, unique: int = 0) -> dict:
    """n synthetic JPEGs in ``num_classes`` folders named by ImageNet-1k WordNet ids; with
    ``unique`` > 0 only that many are generated and the rest are hard links to them (same decode cost,
    much quicker to make)."""
    made = n if unique <= 0 else min(n, unique)
    stats = make_imagefolder(root, made, num_classes)
    files = sorted(root.glob("*/*.jpg"))
    for i in range(made, n):
        dst = root / f"class_{i % num_classes:03d}" / f"img_{i:06d}.jpg"
        dst.parent.mkdir(exist_ok=True)
        try:
            os.link(files[i % made], dst)
        except OSError:
            shutil.copyfile(files[i % made], dst)
    stats["unique"] = made
    wnids = ImageNetInfo("imagenet-1k").label_names()
    stride = max(1, len(wnids) // num_classes)
    for d in sorted(root.iterdir()):
        d.rename(root / wnids[int(d.name.rsplit("_", 1)[1]) * stride])
    return stats


def save_random_teacher(name: str, path: Path, seed: int = 0) -> None:
    """The teacher at random init, saved as a timm state dict (stands in for downloaded weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(resolve_name(name), pretrained=False)
    torch.save(model.state_dict(), path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (the DataLoader workers)."""
    return time.process_time() + sum(proc_cpu_seconds(p.pid) for p in multiprocessing.active_children())


# ---- the ways to train --------------------------------------------------------------------------
class KdcacheMode:
    """``kdcache train --kd MODE``: a Trainer as run_train builds it, stepped by its own ``_step``. Mode
    cached-v2 is ``--kd cached`` on the format 2 cache (``reader``)."""

    def __init__(self, mode: str, recipe, manifest, reader, engine, args, out_dir: Path):
        self.device = torch.device(args.device)
        kd = "cached" if mode == "cached-v2" else mode
        teacher = None
        if mode == "online":
            model, tinfo = create_teacher(args.teacher, args.teacher_weights, num_classes=manifest.num_classes)
            teacher = OnlineTeacher(
                model.to(args.device), tinfo.mean, tinfo.std, args.channels_last, amp_dtype(args.amp)
            )
        self.source = CacheBatchSource(
            reader,
            engine,
            np.asarray(manifest.dataset["to_teacher"]),
            recipe.train.global_batch,
            workers=args.workers,
            with_topk=kd == "cached",
        )
        options = RunOptions(
            out_dir=out_dir / mode,
            mode=kd,
            device=args.device,
            amp=args.amp,
            channels_last=args.channels_last,
            progress=False,
            tensorboard=False,
        )
        self.trainer = t = Trainer(recipe, manifest.num_classes, options, teacher=teacher)
        # What Trainer.fit does before its first epoch (no checkpoint, no run log: nothing timed).
        t.steps_per_epoch = self.source.steps_per_epoch
        t.scheduler = create_scheduler(t.optimizer, t.cfg, t.steps_per_epoch)
        set_total_updates(t.ema, t.steps_per_epoch * t.cfg.epochs)
        t.train_model.train()
        self.sums: dict[str, torch.Tensor] = {}

    def step(self, batch, epoch: int, step: int) -> None:
        parts = self.trainer._step(batch, epoch, step)
        for k, v in parts.detached().items():  # as Trainer._train_epoch accumulates the epoch's stats
            self.sums[k] = self.sums.get(k, 0) + v.double()


class TimmMode:
    """timm's online distillation, ``LogitDistillationTask``, on kdcache's views.

    Mirrors timm train.py's step with a task: ``task(input, target)['loss']`` under autocast,
    backward, ``dispatch_clip_grad``, optimiser step, ``lr_scheduler.step_update``,
    ``model_ema.update``. The target is the mixed, smoothed one FastCollateMixup gives, with
    SoftTargetCrossEntropy, as train.py uses with Mixup/CutMix. The uint8 views are normalised for
    the student (the prefetcher's job in timm); the task renormalises them for the teacher.
    """

    def __init__(self, recipe, manifest, reader, engine, args):
        cfg = self.cfg = recipe.train
        self.device = torch.device(args.device)
        self.num_classes = manifest.num_classes
        self.amp = amp_dtype(args.amp)
        self.source = CacheBatchSource(
            reader, engine, np.asarray(manifest.dataset["to_teacher"]), cfg.global_batch, workers=args.workers,
            with_topk=False,
        )  # fmt: skip
        self.student = create_student(cfg, self.num_classes).to(self.device)  # same init as the trainer's
        teacher, _ = create_teacher(args.teacher, args.teacher_weights, num_classes=self.num_classes)
        if args.channels_last:
            self.student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        self.task = LogitDistillationTask(
            self.student,
            teacher.to(self.device),
            criterion=SoftTargetCrossEntropy(),
            distill_loss_weight=cfg.kd_weight,
            task_loss_weight=cfg.ce_weight,
            temperature=cfg.temperature,
            device=self.device,
            verbose=False,
        )
        self.ema = self.task.setup_ema(decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
        self.optimizer = create_optimizer(self.student, cfg)  # timm's create_optimizer_v2, LAMB
        self.scheduler = create_scheduler(self.optimizer, cfg, self.source.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.amp == "fp16")
        self.normalize = Normalize.for_model(self.student, args.channels_last).to(self.device)
        self.updates = 0
        self.task.train()

    def step(self, batch, epoch: int, step: int) -> None:
        cfg = self.cfg
        batch = batch.to(self.device, non_blocking=True)
        x = self.normalize(batch.images)
        target = mixed_smooth_target(batch.y_a, batch.y_b, batch.lam, self.num_classes, cfg.label_smoothing)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.task(x, target)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.student.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.updates += 1
        self.scheduler.step_update(num_updates=self.updates)
        self.ema.update(self.student, step=self.updates)


def timed_run(runner, epoch: int, warmup: int, steps: int) -> tuple[int, float, float]:
    """(images, wall s, CPU s of main process + workers) over ``steps`` steps after ``warmup`` steps,
    from a fresh epoch iterator (its DataLoader starts its workers during the warm-up)."""
    batches = runner.source.epoch_batches(epoch)
    try:
        for s in range(warmup):
            runner.step(next(batches), epoch, s)
        _sync(runner.device)
        c0, t0 = _cpu_seconds(), time.perf_counter()
        images = 0
        for s in range(warmup, warmup + steps):
            batch = next(batches)
            images += len(batch)
            runner.step(batch, epoch, s)
        _sync(runner.device)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    finally:
        batches.close()  # stops this epoch's DataLoader workers
    return images, wall, cpu


def loss_overhead(
    num_classes: int, batch: int, widths: dict[str, int], device: torch.device, reps: int = 30
) -> dict[str, float]:
    """ms per step of the loss alone (forward + backward on (batch, C) logits) for each target kind:
    none, online, and each cached kind in ``widths`` (name -> stored classes per row, k or k + tail)."""
    g = torch.Generator().manual_seed(0)
    logits0 = torch.randn(batch, num_classes, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    lam = torch.rand(batch, generator=g).to(device)
    lp = torch.log_softmax(torch.randn(batch, num_classes, generator=g), 1).topk(max(widths.values()), dim=1)
    topk_lp, topk_cls = lp.values.half().to(device), lp.indices.to(torch.int16).to(device)
    teacher_logits = torch.randn(batch, num_classes, generator=g).to(device)
    loss_fn = KDLoss(num_classes)

    def run(kind: str) -> None:
        logits = logits0.clone().requires_grad_(True)
        target = None
        if kind in widths:
            w = widths[kind]
            target = TeacherTarget.from_topk(topk_lp[:, :w], topk_cls[:, :w], num_classes)
        elif kind == "online":
            target = TeacherTarget.from_logits(teacher_logits)
        loss_fn(logits, y, y.flip(0), lam, target).total.backward()

    out = {}
    for kind in ("none", *widths, "online"):
        run(kind)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            run(kind)
        _sync(device)
        out[kind] = 1e3 * (time.perf_counter() - t0) / reps
    return out


# ---- report -------------------------------------------------------------------------------------
PAIRS = (
    ("cached", "none"),
    ("cached-v2", "none"),
    ("cached-v2", "cached"),
    ("cached", "online"),
    ("cached", "timm"),
)
GOALS = {
    "cached/none": "goal >= 0.97",
    "cached-v2/none": "goal >= 0.97",
    "cached-v2/cached": "format 2 vs 1, no goal",
    "cached/online": "goal >= 2.3 on the 2-core CPU",
    "cached/timm": "no goal",
}


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def report(
    rows: list[dict[str, Any]], modes: list[str], steps: int, batch: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-round table, medians, and the medians of the per-round ratios."""
    pairs = [(a, b) for a, b in PAIRS if {a, b} <= set(modes)]
    head = ["round", "order", "load", *(f"{m} img/s" for m in modes), *(f"{a}/{b}" for a, b in pairs)]
    width = [max(6, len(h)) for h in head]
    width[1] = max(width[1], len("/".join(SHORT[m] for m in modes)) + 1)
    fmt = "  ".join(f"{{:>{w}}}" for w in width)
    print(fmt.format(*head))
    for r in rows:
        ratios = [r["rate"][a] / r["rate"][b] for a, b in pairs]
        print(
            fmt.format(
                r["round"],
                "/".join(SHORT[m] for m in r["order"]),
                f"{r['load']:.1f}",
                *(f"{r['rate'][m]:.2f}" for m in modes),
                *(f"{q:.3f}" for q in ratios),
            )
        )
    med = {m: _median([r["rate"][m] for r in rows]) for m in modes}
    qmed = {f"{a}/{b}": _median([r["rate"][a] / r["rate"][b] for r in rows]) for a, b in pairs}
    qcpu = {f"{a}/{b}": _median([r["cpu"][b] / r["cpu"][a] for r in rows]) for a, b in pairs}
    print(fmt.format("median", "", "", *(f"{med[m]:.2f}" for m in modes), *(f"{qmed[k]:.3f}" for k in qmed)))

    print()
    fmt2 = "{:<9}  {:>13}  {:>11}  {:>14}  {:>14}"
    print(fmt2.format("mode", "median img/s", "s per step", "CPU ms/image", "CPU cores busy"))
    for m in modes:
        cpu = _median([r["cpu"][m] for r in rows])
        busy = _median([r["busy"][m] for r in rows])
        print(fmt2.format(m, f"{med[m]:.2f}", f"{batch / med[m]:.2f}", f"{cpu:.0f}", f"{busy:.2f}"))
    print(f"(images/s over {steps} timed steps of {batch} views per mode and round; CPU = main process + workers)")
    return qmed, qcpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="resnet50", help="timm student (random init)")
    ap.add_argument("--teacher", default="beit_base", help="timm teacher or kdcache alias (random init, via a .pth)")
    ap.add_argument("--teacher-weights", help="use this weights file instead of a random-init one")
    ap.add_argument("--batch", type=int, default=16, help="views per optimiser step (even)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per mode and round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before each timed run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--views", type=int, help="images = views per cache epoch (default: batch x (warmup + steps + 2 x workers): "
        "the epoch outlasts a timed run by the DataLoader's prefetch, so workers keep rendering while it is timed)",
    )  # fmt: skip
    ap.add_argument(
        "--unique-images", type=int, default=0, help="generate only this many distinct JPEGs and hard-link the "
        "rest (0: all distinct); for large --views",
    )  # fmt: skip
    ap.add_argument("--classes", type=int, default=100, help="class folders of the synthetic data (<= 1000)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (build and training)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument(
        "--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated subset of {','.join(MODES)} "
        f"(default {','.join(DEFAULT_MODES)}; cached-v2 builds a second cache, as format 2)",
    )  # fmt: skip
    ap.add_argument(
        "--format-version", type=int, choices=(1, 2), default=1, help="format of the cache that modes cached, "
        "none, online and timm read (2: top-k plus a tail, which mode cached then reads)",
    )  # fmt: skip
    ap.add_argument(
        "--tail-classes", type=int, help="tail classes of a format 2 cache (--format-version 2 or mode cached-v2; "
        f"default {DEFAULT_TAIL_CLASSES})",
    )  # fmt: skip
    ap.add_argument("--data", type=Path, help="an ImageFolder with ImageNet WordNet-id folders instead of synthetic")
    args = ap.parse_args(argv)
    modes = [m for m in MODES if m in args.modes.split(",")]
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown or not modes:
        ap.error(f"--modes: unknown {', '.join(sorted(unknown)) or 'empty'}; choose from {', '.join(MODES)}")
    if "cached-v2" in modes and args.format_version == 2:
        ap.error("mode cached-v2 compares format 2 with format 1: leave --format-version at 1 (mode cached reads it)")
    if args.tail_classes is not None and args.format_version == 1 and "cached-v2" not in modes:
        ap.error("--tail-classes needs --format-version 2 or mode cached-v2")
    tail = DEFAULT_TAIL_CLASSES if args.tail_classes is None else args.tail_classes
    if tail < 1:
        ap.error("--tail-classes must be >= 1")
    if args.batch < 2 or args.batch % 2:
        ap.error("--batch must be even (mixing pairs stay whole)")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps >= 1, --warmup >= 0, --rounds >= 1")
    per_run = args.batch * (args.warmup + args.steps)
    views = args.views if args.views is not None else per_run + args.batch * 2 * args.workers
    if args.data is None and views < per_run:
        ap.error(f"--views {views} < batch x (warmup + steps) = {per_run}: a timed run must fit in one cache epoch")
    if not 1 <= args.classes <= 1000:
        ap.error("--classes must be in 1..1000")
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)

    t_start = time.perf_counter()
    print("\n".join(machine_info()))
    if device.type == "cuda":
        print(f"device  : {torch.cuda.get_device_name(device)}, amp {args.amp}, channels_last {args.channels_last}")
    else:
        print(f"device  : cpu, amp {args.amp}, {torch.get_num_threads()} torch threads in the main process")

    with tempfile.TemporaryDirectory(prefix="kdcache-train-bench-") as tmp_s:
        tmp = Path(tmp_s)
        root = args.data or tmp / "train"
        if args.data is None:
            t0 = time.perf_counter()
            st = make_data(root, views, min(args.classes, views), args.unique_images)
            dup = f" ({st['unique']} distinct)" if st["unique"] < views else ""
            print(
                f"data    : {views} synthetic JPEGs{dup} q90 in {min(args.classes, views)} classes (ImageNet wnids), "
                f"mean {st['mean_mpix']:.3f} Mpix, {st['mean_kb']:.0f} KB ({time.perf_counter() - t0:.1f} s)"
            )
        else:
            print(f"data    : {root}")
        if args.teacher_weights is None:
            args.teacher_weights = str(tmp / "teacher.pth")
            save_random_teacher(args.teacher, Path(args.teacher_weights))
            weights_note = "random init, saved to a temporary .pth"
        else:
            weights_note = args.teacher_weights
        builds = {"cache": args.format_version}
        if "cached-v2" in modes:
            builds["cache-v2"] = 2
        for name, version in builds.items():
            print(f"{name:<8}: building {views} views with the teacher as format {version} (not timed) ...", flush=True)
            t0 = time.perf_counter()
            bcfg = BuildConfig(
                teacher=args.teacher,
                data=str(root),
                out=str(tmp / name),
                epochs=1,  # every round reads it (the recipe's 610 would cost 610 teacher passes)
                format_version=version,
                tail_classes=tail if version == 2 else None,
                teacher_weights=args.teacher_weights,
                batch_size=min(64, args.batch * 4),
                workers=args.workers,
                device=args.device,
                progress=False,
            )
            summary = run_build(bcfg, prepare_build(bcfg), bcfg.out).summary(args.teacher)
            print(f"{name:<8}: built in {time.perf_counter() - t0:.1f} s (not timed below)")
            print("\n".join("          " + line.strip() for line in summary.splitlines()[1:]))

        reader = open_cache(str(tmp / "cache"))
        m = reader.manifest
        engine = open_replay(m)
        m2 = None
        if "cached-v2" in modes:
            reader2 = open_cache(str(tmp / "cache-v2"))
            m2 = reader2.manifest
            b1, b2 = reader.load_epoch(0), reader2.load_epoch(0)
            same = all(np.array_equal(getattr(b1, f), getattr(b2, f)) for f in ("sample_id", "params", "digest"))
            if not same or not np.array_equal(b1.topk_logprob, b2.topk_logprob[:, : m.topk]):
                raise SystemExit("the format 1 and format 2 caches hold different views or top-k: not comparable")
            engine2 = open_replay(m2)
        targs = TrainArgs(student=args.student, cache=str(tmp / "cache"), out=str(tmp / "runs"), batch_size=args.batch)
        recipe = resolve_recipe(targs, m.recipe)
        runners: dict[str, Any] = {}
        for mode in modes:
            if mode == "timm":
                runners[mode] = TimmMode(recipe, m, reader, engine, args)
            elif mode == "cached-v2":
                runners[mode] = KdcacheMode(mode, recipe, m2, reader2, engine2, args, tmp / "runs")
            else:
                runners[mode] = KdcacheMode(mode, recipe, m, reader, engine, args, tmp / "runs")
        steps_per_epoch = runners[modes[0]].source.steps_per_epoch
        if steps_per_epoch < args.warmup + args.steps:
            raise SystemExit(
                f"a cache epoch has {steps_per_epoch} steps of {args.batch}; a timed run needs "
                f"{args.warmup + args.steps}: raise --views or lower --steps"
            )
        t = recipe.train
        first = runners[modes[0]]
        student = first.student if isinstance(first, TimmMode) else first.trainer.model
        print(
            f"setup   : student {t.model} ({sum(p.numel() for p in student.parameters()) / 1e6:.1f} M params), "
            f"teacher {args.teacher} = {m.teacher['model']} ({weights_note}), {m.image_size}px, "
            f"{m.num_classes} classes, {m.label_scheme} (format {m.format_version})"
            + (f"; cached-v2: {m2.label_scheme} (format 2)" if m2 is not None else "")
        )
        print(
            f"          batch {args.batch} views per step, {args.warmup} warm-up + {args.steps} timed steps per mode "
            f"and round, {args.rounds} rounds, order rotated each round"
        )
        print(
            f"          step = {t.opt.upper()} lr {t.lr} wd {t.weight_decay}, clip {t.clip_grad}, EMA {t.ema_decay}, "
            f"loss {t.kd_weight} KL + {t.ce_weight} CE (none: CE only), label smoothing {t.label_smoothing}"
        )
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(
            f"          {args.workers} DataLoader workers re-render (and digest-check) every view; on this machine "
            f"they compete with the model's {torch.get_num_threads()} torch threads for {cores} cores"
        )
        print()

        rows = []
        for r in range(args.rounds):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
            row: dict[str, Any] = {"round": r, "order": order, "load": load, "rate": {}, "cpu": {}, "busy": {}}
            for mode in order:
                n, wall, cpu = timed_run(runners[mode], r, args.warmup, args.steps)
                row["rate"][mode] = n / wall
                row["cpu"][mode] = 1e3 * cpu / n
                row["busy"][mode] = cpu / wall
                print(f"  round {r} {mode:<9} {n / wall:7.2f} img/s  ({wall:.1f} s, CPU {cpu:.1f} s)", flush=True)
            rows.append(row)
        del runners
    print()
    qmed, qcpu = report(rows, modes, args.steps, args.batch)

    print()
    for k, q in qmed.items():
        cpu_note = f"; per CPU-second {qcpu[k]:.3f}x" if device.type == "cpu" else ""
        print(f"{k:<16}: {q:.3f}x  (median of per-round images/s ratios, {GOALS[k]}{cpu_note})")
    widths = {"cached": m.label_width, **({"cached-v2": m2.label_width} if m2 is not None else {})}
    lo = loss_overhead(m.num_classes, args.batch, widths, device)
    step_none_ms = 1e3 * args.batch / _median([r["rate"]["none"] for r in rows]) if "none" in modes else math.nan
    cached_txt = ", ".join(f"{kind} {lo[kind]:.2f} ms (top-{w} rebuild + KL)" for kind, w in widths.items())
    print(
        f"loss only (fwd+bwd, {args.batch}x{m.num_classes}): none {lo['none']:.2f} ms, {cached_txt}, "
        f"online {lo['online']:.2f} ms (+ the teacher)"
    )
    for kind in widths:
        extra = lo[kind] - lo["none"]
        share = f" = {100 * extra / step_none_ms:.3f}% of a none step" if "none" in modes else ""
        print(f"          {kind} - none = {extra:.2f} ms/step{share}")
    print(f"total   : {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
