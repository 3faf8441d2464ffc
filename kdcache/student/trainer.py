"""The training loop: views in, checkpoints and metrics out. Independent of where views come from."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from timm.utils import dispatch_clip_grad
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from kdcache.bottleneck import FeedTimes
from kdcache.distributed import World, failure_point
from kdcache.models.normalize import Normalize
from kdcache.models.online_teacher import Teacher
from kdcache.models.precision import AMP_CHOICES, amp_dtype
from kdcache.models.student import create_student
from kdcache.recipe import Recipe
from kdcache.storage.atomic import write_atomic
from kdcache.student.batch import BatchError, BatchSource, TrainBatch
from kdcache.student.best import BestCheckpoints, delete_files
from kdcache.student.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    average_checkpoints,
    load_checkpoint,
    save_atomic,
)
from kdcache.student.ema import create_ema, set_total_updates
from kdcache.student.evaluate import EvalResult, evaluate
from kdcache.student.loss import KDLoss, LossParts
from kdcache.student.optim import create_optimizer
from kdcache.student.runlog import RunLog, epoch_line
from kdcache.student.schedule import create_scheduler
from kdcache.student.targets import TeacherTarget

MODES = ("cached", "online", "none")
CONFIG_FILE = "config.yaml"
CKPT_DIR = "checkpoints"
LAST_FILE = "last.pt"
BEST_DIR = "ema_best"
FINAL_FILE = "final.pt"
_STEP_SEED_TAG = 0x57E9_5EED
_log = logging.getLogger("kdcache.train")


class TrainError(RuntimeError):
    """The run cannot start or continue as asked; the message says why and what to do."""


@dataclass(frozen=True)
class RunOptions:
    """How (not what) to train: hardware and bookkeeping. What to train is the recipe."""

    out_dir: Path
    mode: str = "cached"  # cached | online | none
    device: str = "cpu"
    amp: str = "off"  # off | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = False
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True
    checkpoint_every_steps: int = 0  # also save last.pt every n updates within an epoch; 0: epoch ends only
    validate_pairs: bool = True  # verify the pair structure of every batch (cheap)
    # Gets one line per epoch on rank 0 (loss and its parts, lr, throughput, data wait, val top-1), with or
    # without the bar; None: the "kdcache.train" logger at INFO.
    on_epoch: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.mode not in MODES:
            raise TrainError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.amp not in AMP_CHOICES:
            raise TrainError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.checkpoint_every_steps < 0:
            raise TrainError("checkpoint_every_steps must be >= 0")


@dataclass(frozen=True)
class FitResult:
    completed: bool  # the whole schedule ran (False: stopped early via stop_at_step)
    epochs_done: int
    global_step: int
    final: EvalResult | None  # of the averaged EMA checkpoints (None without a val set or if not completed)
    averaged_epochs: list[int] = field(default_factory=list)
    out_dir: Path = Path()
    teacher_seconds: float = 0.0  # online mode: wall time of teacher forwards in this process and run
    # This process and run: wall time of the training loops, and the part of it blocked waiting for
    # the next batch (timm's train.py `Data` against `Time`); see kdcache.bottleneck.
    train_seconds: float = 0.0
    data_seconds: float = 0.0
    step_seconds: float = 0.0  # in the optimiser steps themselves (not checkpoint writes or logging)
    train_loss: dict[str, float] = field(default_factory=dict)  # the last epoch's mean loss, kd, ce

    @property
    def feed(self) -> FeedTimes:
        return FeedTimes(self.train_seconds, self.data_seconds, self.step_seconds)


def _teacher_choice(info: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(layer, weight) of the soft labels a run trains on; a run that records none used the cache's own."""
    teachers = info.get("teachers") or [{"layer": ".", "weight": 1.0}]
    return [(str(t["layer"]), round(float(t["weight"]), 9)) for t in teachers]


class Trainer:
    """Trains a timm student on pre-mixed uint8 views in mode cached, online or none.

    - Batches come from a :class:`~kdcache.student.batch.BatchSource`; each holds this process's
      ``recipe.train.per_process_batch(world_size)`` views of one optimiser step.
    - ``cached`` reads the teacher from each batch's top-k; ``online`` calls ``teacher`` (uint8 NHWC on
      the device -> logits, see :class:`~kdcache.models.online_teacher.OnlineTeacher`); ``none``
      trains on the mixed, smoothed labels alone.
    - ``val_batches`` (re-iterable: a DataLoader or a list) yields (uint8 NHWC, int64 labels); under
      DDP each process passes its own disjoint shard.
    - Under an initialised torch.distributed process group the student is wrapped in DDP.

    Run directory: config.yaml, metrics.jsonl, tb/, checkpoints/last.pt, checkpoints/ema_best/,
    final.pt (uniform average of the best ``average_top`` EMA checkpoints by EMA val top-1).
    """

    def __init__(
        self,
        recipe: Recipe,
        num_classes: int,
        options: RunOptions,
        *,
        teacher: Teacher | None = None,
        val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        run_info: Mapping[str, Any] | None = None,
    ):
        if options.mode == "online" and teacher is None:
            raise TrainError("mode online needs a teacher callable")
        if options.mode != "online" and teacher is not None:
            raise TrainError(f"mode {options.mode} does not use a teacher; pass mode='online' to run one")
        self.recipe = recipe
        self.cfg = cfg = recipe.train
        self.num_classes = num_classes
        self.options = options
        self.teacher = teacher
        self.val_batches = val_batches
        self.run_info = dict(run_info or {})
        self.dist = World.current()
        self.per_process_batch = cfg.per_process_batch(self.dist.size)
        self.device = torch.device(options.device)
        self.amp_dtype = amp_dtype(options.amp)
        self.teacher_seconds = 0.0  # wall time of online teacher forwards in this process
        # wall time of epoch loops, the part waiting for batches, the part in optimiser steps
        self.train_seconds = self.data_seconds = self.step_seconds = 0.0
        self.out_dir = options.out_dir

        self.model = create_student(cfg, num_classes).to(self.device)
        if options.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalize.for_model(self.model, options.channels_last).to(self.device)
        self.ema = create_ema(self.model, cfg)
        self.optimizer = create_optimizer(self.model, cfg)
        self.loss_fn = KDLoss.from_config(cfg, num_classes)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=options.amp == "fp16")
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.scheduler: Any = None
        self.best = BestCheckpoints(self.out_dir / CKPT_DIR / BEST_DIR, cfg.average_top)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # completed steps of epoch ``self.epoch`` (non-zero only mid-epoch)
        self.global_step = 0  # completed optimiser updates
        self.steps_per_epoch = 0
        self.last_metrics: dict[str, Any] = {}

    # ---- configuration --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The resolved configuration saved in config.yaml and in every checkpoint."""
        return {
            "recipe": self.recipe.to_dict(),
            "run": {
                "mode": self.options.mode,
                "num_classes": self.num_classes,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.dist.size,
                "per_process_batch": self.per_process_batch,
                "amp": self.options.amp,
                "channels_last": self.options.channels_last,
                "device": self.device.type,
            },
            "info": self.run_info,
        }

    @property
    def last_path(self) -> Path:
        return self.out_dir / CKPT_DIR / LAST_FILE

    def _write_config(self) -> None:
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / CONFIG_FILE
        write_atomic(path, yaml.safe_dump(self.config(), sort_keys=False).encode())

    # ---- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "last",
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best.state_dict(),
            "config": self.config(),
            "metrics": self.last_metrics,
        }

    def _save_last(self) -> None:
        if self.dist.is_main:
            save_atomic(self._checkpoint(), self.last_path)

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        saved, now = ckpt.get("config", {}), self.config()
        diffs = _diff(saved.get("recipe", {}), now["recipe"], "recipe")
        for key in ("mode", "num_classes", "steps_per_epoch"):
            if saved.get("run", {}).get(key) != now["run"][key]:
                diffs.append(f"run.{key}: {saved.get('run', {}).get(key)!r} -> {now['run'][key]!r}")
        before, after = _teacher_choice(saved.get("info", {})), _teacher_choice(now["info"])
        if before != after:
            diffs.append(f"teachers (--teacher): {before} -> {after}")
        if diffs:
            raise TrainError(
                f"cannot resume from {path}: the run was started with a different configuration ("
                + "; ".join(diffs[:8])
                + "). Resume with the same recipe and data, or start a new run directory."
            )
        self.model.load_state_dict(ckpt["model"])
        self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.best.load_state_dict(ckpt["best"], prune=self.dist.is_main)
        self.epoch = int(ckpt["epoch"])
        self.step_in_epoch = int(ckpt["step_in_epoch"])
        self.global_step = int(ckpt["global_step"])
        self.last_metrics = dict(ckpt.get("metrics") or {})

    # ---- the run --------------------------------------------------------------------------------
    def fit(self, source: BatchSource, *, resume: bool = False, stop_at_step: int | None = None) -> FitResult:
        """Train to the end of the schedule (or until ``stop_at_step`` updates are done, then save and
        return: how tests and schedulers simulate an interruption).

        ``resume``: continue from checkpoints/last.pt if there is one. Without it, a run directory that
        already holds a checkpoint is refused rather than overwritten.
        """
        cfg = self.cfg
        self.steps_per_epoch = steps = int(source.steps_per_epoch)
        if steps < 1:
            raise TrainError("the batch source has no whole global batch per epoch: more data or a smaller batch")
        self.scheduler = create_scheduler(self.optimizer, cfg, steps)
        set_total_updates(self.ema, steps * cfg.epochs)  # the seed's EMA ramp spans the whole run
        resumed = False
        if self.last_path.is_file():
            if not resume:
                raise TrainError(
                    f"{self.out_dir} already holds a run ({self.last_path}); resume it or choose a new out dir"
                )
            self._resume(self.last_path)
            resumed = True
        self._write_config()
        log = RunLog(
            self.out_dir,
            enabled=self.dist.is_main,
            tensorboard=self.options.tensorboard,
            purge_step=self.global_step if resumed else None,
        )
        if resumed:
            log.truncate_after_epoch(self.epoch)
        if "teachers" in self.run_info:
            log.teachers(self.run_info["teachers"], self.global_step)
        try:
            while self.epoch < cfg.epochs:
                epoch = self.epoch
                stats = self._train_epoch(source, epoch, self.step_in_epoch, stop_at_step, log)
                if stats is None:  # stopped mid-epoch
                    self._save_last()
                    return self._result(completed=False)
                self.epoch, self.step_in_epoch = epoch + 1, 0
                entry = {"epoch": self.epoch, "global_step": self.global_step, **stats}  # epochs completed
                score = None
                if self.val_batches is not None and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
                    val = self._evaluate(self.model)
                    val_ema = self._evaluate(self.ema.module)
                    entry["val"], entry["val_ema"] = val.to_dict(), val_ema.to_dict()
                    score = val_ema.top1
                elif self.val_batches is None:
                    score = float(self.epoch)  # no validation: keep the latest EMAs
                self.last_metrics = entry  # before consider(): the EMA file records its own epoch's metrics
                dropped = []
                if score is not None:
                    dropped = self.best.consider(self.epoch, score, self._ema_state, write=self.dist.is_main)
                log.record(entry)
                if self.dist.is_main:
                    (self.options.on_epoch or _log.info)(epoch_line(entry, cfg.epochs))
                log.scalars(_flat_scalars(entry), self.global_step)
                log.flush()
                self._save_last()
                if self.dist.is_main:
                    delete_files(dropped)  # only now that last.pt no longer lists them
                if stop_at_step is not None and self.global_step >= stop_at_step and self.epoch < cfg.epochs:
                    return self._result(completed=False)
            final, epochs = self._finish(log)
            return self._result(completed=True, final=final, averaged=epochs)
        finally:
            log.close()

    def _result(self, completed: bool, final: EvalResult | None = None, averaged: list[int] | None = None) -> FitResult:
        return FitResult(
            completed,
            self.epoch,
            self.global_step,
            final,
            averaged or [],
            self.out_dir,
            self.teacher_seconds,
            self.train_seconds,
            self.data_seconds,
            self.step_seconds,
            dict(self.last_metrics.get("train") or {}),
        )

    def _ema_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "ema",
            "epoch": self.epoch,
            "global_step": self.global_step,
            "state_dict": self.ema.module.state_dict(),
            "config": self.config(),
            "metrics": self.last_metrics,
        }

    def _evaluate(self, model: torch.nn.Module) -> EvalResult:
        assert self.val_batches is not None
        return evaluate(model, self.val_batches, self.normalize, self.device, self.amp_dtype, self.dist)

    def _finish(self, log: RunLog) -> tuple[EvalResult | None, list[int]]:
        """Average the best EMA checkpoints uniformly, evaluate the result, save final.pt."""
        self.dist.barrier()  # rank 0 wrote the files; the run directory is shared
        paths = self.best.paths()
        if not paths:
            raise CheckpointError("no EMA checkpoints to average (was any epoch evaluated?)")
        averaged = average_checkpoints(paths)
        model = create_student(self.cfg, self.num_classes)
        model.load_state_dict(averaged)
        model.to(self.device)
        if self.options.channels_last:
            model.to(memory_format=torch.channels_last)
        final = self._evaluate(model) if self.val_batches is not None else None
        epochs = [e.epoch for e in self.best.entries]
        entry: dict[str, Any] = {"event": "final", "averaged_epochs": epochs}
        if final is not None:
            entry["val_avg"] = final.to_dict()
            log.scalars({"final/top1": final.top1, "final/top5": final.top5}, self.global_step)
        log.record(entry)
        if self.dist.is_main:
            save_atomic(
                {
                    "format": CHECKPOINT_FORMAT,
                    "kind": "final",
                    "state_dict": averaged,
                    "averaged_epochs": epochs,
                    "config": self.config(),
                    "metrics": entry,
                },
                self.out_dir / FINAL_FILE,
            )
        return final, epochs

    # ---- one epoch ------------------------------------------------------------------------------
    def _train_epoch(
        self, source: BatchSource, epoch: int, start_step: int, stop_at_step: int | None, log: RunLog
    ) -> dict[str, Any] | None:
        """Train steps start_step.. of ``epoch``; None if stopped mid-epoch, else the epoch's stats."""
        steps, opts = self.steps_per_epoch, self.options
        self.train_model.train()
        sums: dict[str, torch.Tensor] = {}
        run = 0
        bar = tqdm(
            total=steps,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not (self.dist.is_main and opts.progress),
            dynamic_ncols=True,
            leave=False,
        )
        t0 = time.perf_counter()
        data_s = step_s = 0.0
        batches = iter(source.epoch_batches(epoch, start_step))
        try:
            for step in range(start_step, steps):
                tw = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    raise TrainError(
                        f"the batch source ended at step {step} of epoch {epoch}; it promised {steps} steps"
                    ) from None
                # Blocked on the loader; the step after it ends in a device sync (the finite-loss check).
                data_s += time.perf_counter() - tw
                ts = time.perf_counter()
                parts = self._step(batch, epoch, step)
                step_s += time.perf_counter() - ts
                run += 1
                self.step_in_epoch = step + 1
                for k, v in parts.detached().items():
                    sums[k] = sums.get(k, 0) + v.double()
                if not bar.disable:  # every step: the epoch's mean loss so far, the lr, the data wait
                    postfix = {k: f"{float(sums[k]) / run:.4g}" for k in ("loss", "kd", "ce") if k in sums}
                    postfix["lr"] = f"{self._lr():.3g}"
                    postfix["data"] = f"{data_s / max(time.perf_counter() - t0, 1e-9):.0%}"
                    bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                if self.global_step % self.cfg.log_every == 0:
                    now = {k: float(v) for k, v in parts.detached().items()}
                    now["lr"] = self._lr()
                    log.scalars(now, self.global_step, prefix="step/")
                if step + 1 < steps:
                    if stop_at_step is not None and self.global_step >= stop_at_step:
                        return None
                    every = opts.checkpoint_every_steps
                    if every and self.global_step % every == 0:
                        self._save_last()
        finally:
            bar.close()
            self.train_seconds += time.perf_counter() - t0
            self.data_seconds += data_s
            self.step_seconds += step_s
        elapsed = time.perf_counter() - t0
        keys = sorted(sums)
        totals = self.dist.all_reduce_sum([*(sums[k] for k in keys), run], self.device)
        n = totals[-1]
        train = {k: (v / n if n else math.nan) for k, v in zip(keys, totals[:-1], strict=True)}
        return {
            "lr": self._lr(),
            "train": train,
            "img_per_s": run * self.cfg.global_batch / elapsed if elapsed > 0 else math.nan,
            # Share of this process's epoch wall time spent waiting for views (high: data-bound).
            "data_time_share": data_s / elapsed if elapsed > 0 else math.nan,
        }

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _check(self, batch: TrainBatch) -> None:
        if len(batch) != self.per_process_batch:
            raise BatchError(
                f"batch of {len(batch)} views; this process trains on {self.per_process_batch} "
                f"(global batch {self.cfg.global_batch} / {self.dist.size} processes)"
            )
        size = self.recipe.augment.image_size
        if tuple(batch.images.shape[1:3]) != (size, size):
            raise BatchError(f"views are {tuple(batch.images.shape[1:3])}, the recipe's image_size is {size}")
        if self.options.mode == "cached" and not batch.has_topk:
            raise BatchError("mode cached needs the teacher's top-k in every batch")
        if self.options.validate_pairs:
            batch.validate_pairs()

    def _step(self, batch: TrainBatch, epoch: int, step: int) -> LossParts:
        failure_point("train-step")  # tests only: a rank failing mid-epoch (KDCACHE_TEST_FAIL)
        self._check(batch)
        # Dropout / stochastic depth (if the recipe turns them on) draw from torch's global RNG:
        # re-seed it per step from (seed, epoch, step, rank), so a resumed run draws the same.
        torch.manual_seed(_step_seed(self.cfg.seed, epoch, step, self.dist.rank))
        self.scheduler.step_update(self.global_step)
        batch = batch.to(self.device, non_blocking=True)
        target = None
        if self.options.mode == "cached":
            assert batch.topk_logprob is not None and batch.topk_class is not None
            target = TeacherTarget.from_cached(
                batch.topk_logprob, batch.topk_class, self.num_classes, batch.topk_layers
            )
        elif self.options.mode == "online":
            assert self.teacher is not None
            t0 = time.perf_counter()
            target = TeacherTarget.from_logits(self.teacher(batch.images))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # so the clock holds the forward, not its launch
            self.teacher_seconds += time.perf_counter() - t0
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = self.train_model(self.normalize(batch.images))
        parts = self.loss_fn(logits, batch.y_a, batch.y_b, batch.lam, target)
        if not torch.isfinite(parts.total):
            raise TrainError(f"non-finite loss at epoch {epoch} step {step}: {parts.detached()}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts.total).backward()
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), self.cfg.clip_grad, mode=self.cfg.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        self.ema.update(self.model, step=self.global_step)
        return parts


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    state = np.random.SeedSequence([seed, _STEP_SEED_TAG, epoch, step, rank]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 63 bits: torch.manual_seed's range


def _diff(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{where}.{k}")
        return out
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def _flat_scalars(entry: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in entry.items():
        if isinstance(v, Mapping):
            for k2, v2 in v.items():
                if isinstance(v2, (int, float)) and k2 != "count":
                    out[f"{k}/{k2}"] = float(v2)
        elif isinstance(v, (int, float)) and k not in ("epoch", "global_step"):
            out[f"epoch/{k}"] = float(v)
    return out
