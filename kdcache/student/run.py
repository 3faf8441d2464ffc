"""``kdcache train`` end to end: cache + data + recipe -> replay check -> Trainer.fit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kdcache.distributed import close_world, init_world
from kdcache.errors import UsageError
from kdcache.models.precision import amp_dtype
from kdcache.student.args import TrainArgs, resolve_recipe
from kdcache.teacher_cache.store.fidelity import format_summary, read_summary
from kdcache.teacher_cache.teacher_pass.command import extend_command, with_epochs
from kdcache.views.replay import LIKELY_CAUSE, ReplayMismatch, open_replay, replay_sample

if TYPE_CHECKING:
    from kdcache.models.teacher import TeacherInfo
    from kdcache.student.trainer import FitResult

log = logging.getLogger("kdcache.train")


class EpochCoverageError(ValueError):
    """The student would train more epochs than the cache holds, without --allow-epoch-reuse."""


def epoch_reuse_message(cov, student_epochs: int, build_command: str) -> str:
    """Why train refuses to cycle through too few cached epochs, and the two ways on."""
    return (
        f"the student trains {student_epochs} epochs but the cache holds {cov.epochs} complete epoch(s): "
        f"it would only ever see {100 * cov.share_seen:.1f}% of the {cov.num_samples:,} samples, "
        f"{cov.views_per_sample:.2f} distinct views each, every view replayed about "
        f"{student_epochs / max(cov.epochs, 1):.1f} times. Extend the cache to {student_epochs} epochs with\n"
        f"  {build_command}\n"
        "or pass --allow-epoch-reuse to train on the cached epochs over and over (each pass in a fresh order)"
    )


def replay_check(reader, engine, n_views: int) -> int:
    """Re-render n sampled views of the cache; raise naming the first mismatch. Returns views checked."""
    checked = 0
    for _, results in replay_sample(reader, engine, n_views):
        for _, problems in results:
            if problems:
                raise ReplayMismatch(f"replay check failed at {problems[0]}. {LIKELY_CAUSE}")
            checked += 2
    return checked


def val_label_map(val_classes: list[str], class_names: tuple[str, ...]) -> np.ndarray:
    index = {n: i for i, n in enumerate(class_names)}
    missing = [c for c in val_classes if c not in index]
    if missing:
        raise UsageError(
            f"--val-data: class folder(s) unknown to the cache's classes: {', '.join(missing[:10])}; "
            "give a validation set with the training set's class folders"
        )
    return np.asarray([index[c] for c in val_classes], dtype=np.int64)


class _MappedVal:
    """Re-iterable val batches with folder labels mapped to the cache's class order."""

    def __init__(self, loader, mapping: np.ndarray):
        self.loader, self.mapping = loader, torch.from_numpy(mapping)

    def __iter__(self):
        for images, labels in self.loader:
            yield images, self.mapping[labels]


def check_temperature(kd: str, temperature: float, topk: int, num_classes: int, draws: int = 0) -> None:
    """Refuse cached KD at T != 1 from a partial top-k, or from draws.

    The leftover mass is spread evenly over the unstored classes. At T = 1 that is the reconstruction
    the build measures (fidelity.json); at T != 1, softmax(log q / T) sharpens or flattens a tail whose
    shape was never stored, so it is not the teacher's softmax(z / T) and nothing measured it.
    Format 3's draws were made from the teacher's distribution at T = 1 (every build stores T = 1):
    their counts average to that distribution, and a power of an average is not the average of powers.
    """
    if kd == "cached" and temperature != 1.0 and draws:
        raise UsageError(
            f"train.temperature is {temperature:g} but the cache's soft labels are draws from the teacher's "
            "distribution at temperature 1, which only average to the teacher at temperature 1. Train at "
            "temperature 1, use --kd online, or build a cache of format 1 with --topk "
            f"{num_classes} (every class)."
        )
    if kd == "cached" and temperature != 1.0 and topk < num_classes:
        raise UsageError(
            f"train.temperature is {temperature:g} but the cache stores only {topk} of {num_classes} "
            "classes: the even spread of the leftover mass is only the teacher's distribution at temperature 1. "
            "Train at temperature 1, use --kd online, or build a cache with --topk "
            f"{num_classes} (every class)."
        )


def online_teacher(reader, name: str | None, weights: str | None) -> tuple[torch.nn.Module, TeacherInfo, list[str]]:
    """(model, TeacherInfo, start lines) of ``--kd online``: the teacher ``name`` (default: the cache's) with
    ``weights`` (--teacher-weights) or else the weights file its cache or layer records, sha256 checked;
    timm's pretrained download only for a teacher the cache does not hold or one built from the hub."""
    from kdcache.models.teacher import create_recorded_teacher
    from kdcache.student.teachers import select_teachers

    m = reader.manifest
    record = m.teacher
    if name is not None:
        try:
            record = select_teachers(reader, name)[0].teacher  # the layer of that name: its weights file
        except UsageError:
            record = {}  # a teacher the cache does not hold: run it as named
    model, tinfo = create_recorded_teacher(record, name, weights, num_classes=m.num_classes)
    same = tinfo.weights_sha256 == record.get("weights_sha256")
    lines = [
        f"teacher: {tinfo.name} run online, weights {tinfo.weights} (sha256 {tinfo.weights_sha256[:12]}..."
        + (", the cache's teacher)" if same else ")")
    ]
    if not same:
        lines.append("note: the online teacher's weights differ from the cache's teacher")
    return model, tinfo, lines


@dataclass(frozen=True)
class TrainOutcome:
    """What ``kdcache train`` did: the fit's result (None on ranks other than 0) and the start lines that
    describe the run (cache, teachers, soft labels, coverage, replay check)."""

    result: FitResult | None
    start_lines: tuple[str, ...]


def run_train(
    args: TrainArgs,
    recorded_build_command: Callable[[str], str | None] | None = None,
    on_start: Callable[[tuple[str, ...]], None] | None = None,
    on_epoch: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train and return what happened; print nothing.

    ``recorded_build_command(cache)`` (the CLI passes the registry's) gives the command that built a
    cache, used to say how to extend it. ``on_start(lines)`` is called on rank 0 with the start lines
    once everything is checked, just before the first step (the CLI prints them there). ``on_epoch(line)``
    gets one line per finished epoch on rank 0 (default: the "kdcache.train" logger).
    """
    from kdcache.models.online_teacher import OnlineTeacher
    from kdcache.student.cache_source import CacheBatchSource
    from kdcache.student.evaluate import make_val_loader
    from kdcache.student.teachers import choose_teachers, common_epochs
    from kdcache.student.trainer import RunOptions, Trainer
    from kdcache.teacher_cache.store import open_cache

    if args.cache is None:
        raise UsageError("no cache given: resolve it first (kdcache.registry.lookup.resolve_train_cache)")
    if args.kd not in ("cached", "online", "none"):
        raise UsageError(f"--kd must be cached, online or none, got {args.kd!r}")
    world = init_world(args.device)
    try:
        reader = open_cache(args.cache)
        m = reader.manifest
        if args.kd == "online" and args.teacher is not None and "," in args.teacher:
            raise UsageError(
                f"--kd online runs one teacher, got --teacher {args.teacher!r}: name one, or train from the "
                "cache's soft labels of several teachers with --kd cached"
            )
        # Mode cached: --teacher chooses among the cache's teachers (its own and its layers); none: its own.
        choice = choose_teachers(reader, args.teacher, cached=args.kd == "cached")
        teachers = choice.teachers
        recipe = resolve_recipe(args, m.recipe)
        recipe.train.per_process_batch(world.size)  # refuses odd or indivisible batches up front
        for t in teachers:
            tm = t.reader.manifest
            check_temperature(args.kd, recipe.train.temperature, tm.label_width, m.num_classes, tm.draws)
        engine = open_replay(m, args.data)
        epochs = common_epochs(reader, [t.reader for t in teachers])  # not cached: the cache's own teacher alone
        info = [
            f"cache {args.cache}: {len(epochs)} complete epoch(s), {m.num_slots} views each, teacher "
            f"{m.teacher.get('name', m.teacher['id'])}"
        ]
        layered = choice.named
        # The same lines whether the cache was named (--cache) or found from --teacher and --data.
        if args.kd == "cached":
            info.append(
                ("teacher: " if len(teachers) == 1 else "teachers (weighted mean of their distributions): ")
                + "; ".join(t.describe() for t in teachers)
            )
        elif args.kd == "none":
            info.append("teacher: not run (--kd none: cross-entropy on the mixed labels alone)")
        for t in teachers:
            tm = t.reader.manifest
            info.append(
                (f"soft labels of {t.name}: " if len(teachers) > 1 else "soft labels: ")
                + f"{tm.label_scheme} of {m.num_classes}; {format_summary(read_summary(t.reader.storage))}"
            )
        if recipe.train.epochs > len(epochs):
            from kdcache.views.coverage import coverage

            cov = coverage(m.seed, epochs, m.dataset["num_samples"], m.repeats)
            if not args.allow_epoch_reuse:
                recorded = recorded_build_command(args.cache) if recorded_build_command else None
                command = (
                    with_epochs(recorded, recipe.train.epochs)
                    if recorded
                    else extend_command(m, args.cache, recipe.train.epochs)
                )
                raise EpochCoverageError(epoch_reuse_message(cov, recipe.train.epochs, command))
            info.append(
                f"student epochs ({recipe.train.epochs}) exceed the cached epochs ({len(epochs)}): epoch e replays "
                f"cached epoch e mod {len(epochs)}, each pass in a fresh pair order; coverage: {cov.describe()}"
            )
        teacher = None
        if args.kd == "online":  # before the replay check: a missing or changed weights file stops at once
            model, tinfo, lines = online_teacher(reader, args.teacher, args.teacher_weights)
            info += lines
            teacher = OnlineTeacher(
                model.to(args.device),
                tinfo.mean,
                tinfo.std,
                args.channels_last,
                amp_dtype(args.amp),
            )
        if args.replay_check > 0 and world.is_main:
            n = replay_check(reader, engine, args.replay_check)
            info.append(f"replay check: {n} re-rendered views match their stored digests")
        val = None
        if args.val_data:
            loader = make_val_loader(
                args.val_data,
                m.image_size,
                recipe.train.eval_crop_pct,
                recipe.train.eval_interpolation,
                workers=args.workers,
                dist=world,
            )
            val = _MappedVal(loader, val_label_map(loader.dataset.source.classes, m.class_names))
        source = CacheBatchSource(
            reader,
            engine,
            np.asarray(m.dataset["to_teacher"]),
            recipe.train.global_batch,
            world.rank,
            world.size,
            args.workers,
            with_topk=args.kd == "cached",
            teachers=choice.source_layers(),
        )
        options = RunOptions(
            out_dir=Path(args.out),
            mode=args.kd,
            device=args.device,
            amp=args.amp,
            channels_last=args.channels_last,
            progress=args.progress,
            checkpoint_every_steps=args.checkpoint_every,
            on_epoch=on_epoch,
        )
        trainer = Trainer(
            recipe,
            m.num_classes,
            options,
            teacher=teacher,
            val_batches=val,
            run_info={
                "cache": reader.storage.absolute(),  # a URL stays a URL
                "teacher": m.teacher,
                "dataset_fingerprint": m.dataset["fingerprint"],
                # Which soft labels: only where there was a choice (a cache without layers records as before).
                **({"teachers": [t.record() for t in teachers]} if layered else {}),
            },
        )
        if args.compile:
            trainer.train_model = torch.compile(trainer.train_model)
        if world.is_main and on_start is not None:
            on_start(tuple(info))
        result = trainer.fit(source, resume=args.resume)
    except BaseException:
        # Leave the process group as it is: tearing it down may wait on ranks inside a collective.
        close_world(world, failed=True)
        raise
    close_world(world)
    return TrainOutcome(result if world.is_main else None, tuple(info))
