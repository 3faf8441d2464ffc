"""``kdcache build`` end to end: resolve inputs, open or resume the store, run this rank's units."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdcache.data.wds_source import open_source
from kdcache.recipe import load_recipe
from kdcache.teacher_cache.build import TeacherRunner, run_units
from kdcache.teacher_cache.build_config import BuildConfig
from kdcache.teacher_cache.classmap import class_map
from kdcache.teacher_cache.distributed import close_world, init_world
from kdcache.teacher_cache.storage import open_storage
from kdcache.teacher_cache.teacher import TeacherInfo, create_teacher
from kdcache.teacher_cache.units import all_units, assign
from kdcache.views import ViewEngine
from kdcache.views.plan import num_slots_for


def resolve_recipe(cfg: BuildConfig):
    recipe = load_recipe(cfg.recipe)
    changes = {}
    if cfg.image_size is not None:
        changes["image_size"] = cfg.image_size
    if cfg.repeats is not None:
        changes["repeats"] = cfg.repeats
    return recipe.replace_augment(**changes) if changes else recipe


def data_location(spec: str) -> str:
    """Absolute form of --data, recorded so train/verify can find the images again."""
    return spec if ".tar" in spec and not Path(spec).is_dir() else str(Path(spec).resolve())


@dataclass(frozen=True)
class PreparedBuild:
    """Everything a build needs before its first unit: resolved inputs, the teacher and the manifest."""

    engine: ViewEngine
    model: torch.nn.Module
    teacher: TeacherInfo
    manifest: object  # kdcache.teacher_cache.manifest.Manifest
    num_slots: int
    unit_size: int

    @property
    def class_dtype(self) -> np.dtype:
        return np.dtype(np.int16 if self.teacher.num_classes <= 32767 else np.int32)


def prepare_build(cfg: BuildConfig) -> PreparedBuild:
    from kdcache.teacher_cache.store import make_manifest

    recipe = resolve_recipe(cfg)
    source = open_source(cfg.data)
    model, tinfo = create_teacher(cfg.teacher, cfg.teacher_weights)
    cmap = class_map(source.classes, model)
    engine = ViewEngine(source, recipe.augment, cfg.seed)
    num_slots = num_slots_for(len(source))
    unit_size = min(cfg.unit_size, num_slots)
    manifest = make_manifest(
        backend=cfg.backend,
        teacher=tinfo.to_dict(),
        recipe=recipe.to_dict(),
        seed=cfg.seed,
        topk=cfg.topk,
        class_names=list(cmap.class_names),
        dataset={
            "fingerprint": source.fingerprint,
            "num_samples": len(source),
            "source": data_location(cfg.data),
            "kind": type(source).__name__,
            "classes": source.classes,
            "to_teacher": list(cmap.to_teacher),
        },
        epochs_planned=cfg.epochs,
        num_slots=num_slots,
        unit_size=unit_size,
        record_width=engine.record_width,
    )
    return PreparedBuild(engine, model, tinfo, manifest, num_slots, unit_size)


def run_build(cfg: BuildConfig) -> str:
    from kdcache.teacher_cache.store import create_or_open_writer

    world = init_world(cfg.device)
    with contextlib.ExitStack() as stack:
        stack.callback(close_world, world)
        prep = prepare_build(cfg)
        dest = None
        if cfg.out is None:
            # Every rank computes the same key from the same inputs, so no rank needs to tell the others.
            dest, prep = _registry_destination(cfg, prep)
            cfg = dataclasses.replace(cfg, out=dest.out, unit_size=prep.unit_size)
            if dest.state == "reused":
                world.barrier()
                return _reused_summary(cfg, dest) if world.is_main else ""
        manifest, num_slots, unit_size = prep.manifest, prep.num_slots, prep.unit_size
        # Rank 0 takes the build lock and creates (or checks) the store first, so the others only
        # ever open a valid one and no unrelated build writes alongside this job.
        error = None
        if world.is_main:
            try:
                lock = open_storage(cfg.out).lock().acquire()
                stack.callback(lock.release)
                writer = create_or_open_writer(cfg.out, manifest)
            except Exception as e:
                error = e
        # The other ranks learn whether rank 0 succeeded instead of waiting at a barrier forever.
        failed = world.broadcast_from_main(None if error is None else str(error))
        if error is not None:
            raise error
        if failed is not None:
            raise RuntimeError(f"rank 0 could not open the cache: {failed}")
        if not world.is_main:
            writer = create_or_open_writer(cfg.out, manifest)
        completed = writer.completed_units()
        mine = assign(all_units(cfg.epochs, num_slots, unit_size), world.rank, world.size)
        pending = [u for u in mine if (u.epoch, u.index) not in completed]
        runner = TeacherRunner(prep.model, prep.teacher.mean, prep.teacher.std, cfg)
        write = writer.write_unit_arrays
        if world.is_main:

            def write(epoch, unit, arrays, _write=writer.write_unit_arrays):
                lock.check()  # a lease on an object store can be lost; stop before the next commit
                _write(epoch, unit, arrays)

        stats = run_units(prep.engine, runner, pending, write, prep.class_dtype, cfg, world)
        world.barrier()
        if not world.is_main:
            return ""
        writer.finalize()
        summary = _summary(cfg, writer, stats, len(mine) - len(pending), world.size)
        if dest is not None:
            summary += "\n" + _record_in_registry(cfg, dest)
        return summary
    return ""


def _registry_destination(cfg: BuildConfig, prep: PreparedBuild):
    from kdcache.registry.destination import plan_destination
    from kdcache.registry.root import cache_root

    dest, manifest = plan_destination(cache_root(cfg.cache_root), prep.manifest, cfg.epochs)
    return dest, dataclasses.replace(prep, manifest=manifest, unit_size=manifest.unit_size)


def _record_in_registry(cfg: BuildConfig, dest) -> str:
    from kdcache.registry.catalog import record
    from kdcache.registry.destination import build_command

    record(dest.root, dest.key, used=True, build_command=build_command(cfg, cfg.cache_root))
    what = {
        "new": "new cache",
        "extended": f"extended the cache that had epochs {list(dest.epochs_before)}",
        "resumed": "resumed an unfinished build",
    }[dest.state]
    return f"  registry       key {dest.key}: {what}"


def _reused_summary(cfg: BuildConfig, dest) -> str:
    from kdcache.registry.catalog import touch

    touch(dest.root, dest.key)
    return "\n".join(
        [
            f"kdcache build: reused {dest.out} ({cfg.backend}); nothing to compute",
            f"  registry       key {dest.key}: epochs {list(dest.epochs_before)} are complete; "
            f"{cfg.epochs} asked",
            "  the teacher did not run; a larger --epochs extends this cache",
        ]
    )


def _summary(cfg: BuildConfig, writer, stats, skipped: int, world_size: int) -> str:
    from kdcache.teacher_cache.store import open_cache

    reader = open_cache(cfg.out)
    views = reader.num_views()
    on_disk = reader.bytes_on_disk()
    lines = [
        f"kdcache build finished: {reader.storage.absolute()} ({reader.manifest.backend})",
        f"  teacher        {cfg.teacher}",
        f"  epochs         {sorted(reader.epochs_complete)} complete of {cfg.epochs} planned",
        f"  this run       {stats.views} views in {stats.seconds:.1f} s = {stats.views_per_s:.1f} views/s"
        f" (rank 0 of {world_size}); teacher forward {100 * stats.teacher_share:.0f}% of the time",
        f"  resumed        {skipped} unit(s) of rank 0 were already complete" if skipped and stats.units else "",
        f"  nothing to do  all {skipped} unit(s) of rank 0 were already complete" if not stats.units else "",
        f"  cache          {views} views, {on_disk / 1e6:.2f} MB, {on_disk / max(views, 1):.1f} B/view",
    ]
    return "\n".join(line for line in lines if line)
