"""``kdcache build`` end to end: resolve inputs, open or resume the store, run this rank's units.

The caller decides where the cache goes (``--out``, or a registry key it resolved from
:func:`prepare_build`'s manifest) and formats the :class:`BuildResult`; nothing here knows the registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcache.data.wds_source import open_source
from kdcache.distributed import close_world, failure_point, init_world
from kdcache.errors import UsageError
from kdcache.models.teacher import TeacherInfo, create_teacher
from kdcache.recipe import Recipe, load_recipe
from kdcache.storage import CacheError, DiskFullError, Storage, build_lock, is_disk_full, open_storage
from kdcache.teacher_cache.store import (
    Manifest,
    ManifestMismatchError,
    class_dtype,
    create_or_open_writer,
    make_manifest,
    open_cache,
    read_manifest,
)
from kdcache.teacher_cache.store.fidelity import (
    DRAW_STATS,
    STATS,
    format_summary,
    merge_unit_stats,
    write_summary,
    write_unit_stats,
)
from kdcache.teacher_cache.store.layers import layer_id, layer_storage, teacher_label, view_differences
from kdcache.teacher_cache.store.layout import BUILD_HEADER, MANIFEST
from kdcache.teacher_cache.teacher_pass.classmap import class_map
from kdcache.teacher_cache.teacher_pass.config import BuildConfig
from kdcache.teacher_cache.teacher_pass.loop import BuildStats, StoredViews, run_units
from kdcache.teacher_cache.teacher_pass.runner import TeacherRunner
from kdcache.teacher_cache.teacher_pass.schedule import all_units, assign
from kdcache.views import ViewEngine
from kdcache.views.plan import num_slots_for


def resolve_recipe(cfg: BuildConfig) -> Recipe:
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
    manifest: Manifest

    @property
    def num_slots(self) -> int:
        return self.manifest.num_slots

    @property
    def unit_size(self) -> int:
        return self.manifest.unit_size

    def with_manifest(self, manifest: Manifest) -> PreparedBuild:
        """The same build with another manifest of the same content (a registry cache's layout adopted)."""
        return dataclasses.replace(self, manifest=manifest)


@dataclass(frozen=True)
class BuildResult:
    """What a build did (rank 0's view of it; other ranks get None from :func:`run_build`)."""

    out: str  # absolute path or URL
    backend: str
    # "new" (nothing was there), "resumed" (some planned units were already committed), "extended" (more
    # epochs than the existing cache planned), or "complete" (every unit was already there).
    outcome: str
    stats: BuildStats  # this rank's views, units, wall, teacher and wait-for-views seconds
    skipped_units: int  # this rank's units that were already committed
    world_size: int
    epochs_complete: tuple[int, ...]
    epochs_planned: int
    views: int  # committed views in the whole cache
    bytes_on_disk: int
    # soft-label fidelity over the cache's measured views (store/fidelity.py FidelityStats.summary); None: none
    fidelity: dict | None = None
    # The teacher's layer (its folder under CACHE/layers/) when the build added a teacher to existing
    # views; None when it built the cache's own (first) layer. ``out`` is the cache either way; the
    # other counts (views, bytes, epochs, fidelity) are the layer's.
    layer: str | None = None

    def headline(self, teacher: str) -> str:
        if self.layer is None:
            return f"kdcache build finished: {self.out} ({self.backend})"
        what = {
            "layer": f"added teacher {teacher} to cache {self.out}",
            "complete": f"teacher {teacher} is already in cache {self.out}",
        }.get(self.outcome, f"{self.outcome} teacher {teacher} of cache {self.out}")
        return f"kdcache build: {what} ({self.backend})"

    def summary(self, teacher: str) -> str:
        """The build's closing report, one aligned line per fact."""
        s = self.stats
        lines = [
            self.headline(teacher),
            f"  teacher        {teacher}",
            f"  layer          layers/{self.layer}: views replayed from the cache's stored params, digests checked"
            if self.layer
            else "",
            f"  epochs         {sorted(self.epochs_complete)} complete of {self.epochs_planned} planned",
            f"  this run       {s.views} views in {s.seconds:.1f} s = {s.views_per_s:.1f} views/s"
            f" (rank 0 of {self.world_size}); teacher forward {s.teacher_seconds:.1f} s, "
            f"{100 * s.teacher_share:.0f}% of the time",
            f"  bottleneck     {s.bottleneck_report()}" if s.units else "",
            f"  resumed        {self.skipped_units} unit(s) of rank 0 were already complete"
            if self.skipped_units and s.units
            else "",
            f"  nothing to do  all {self.skipped_units} unit(s) of rank 0 were already complete" if not s.units else "",
            f"  cache          {self.views} views, {self.bytes_on_disk / 1e6:.2f} MB, "
            f"{self.bytes_on_disk / max(self.views, 1):.1f} B/view",
            f"  soft labels    {format_summary(self.fidelity, self.views)}",
        ]
        return "\n".join(line for line in lines if line)


def prepare_build(cfg: BuildConfig) -> PreparedBuild:
    cfg = cfg.resolved()
    recipe = resolve_recipe(cfg)
    source = open_source(cfg.data)
    model, tinfo = create_teacher(cfg.teacher, cfg.teacher_weights)
    cmap = class_map(source.classes, model)
    cfg = cfg.for_classes(tinfo.num_classes)
    _check_label_width(cfg, tinfo.num_classes)
    engine = ViewEngine(source, recipe.augment, cfg.seed)
    num_slots = num_slots_for(len(source))
    manifest = make_manifest(
        backend=cfg.format,
        teacher={**tinfo.to_dict(), "precision": cfg.precision(model)},
        recipe=recipe.to_dict(),
        seed=cfg.seed,
        topk=cfg.topk,
        tail_classes=cfg.tail(),
        draws=cfg.draws_per_view(),
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
        unit_size=min(cfg.unit_size, num_slots),
        record_width=engine.record_width,
    )
    return PreparedBuild(engine, model, tinfo, manifest)


def _check_label_width(cfg: BuildConfig, num_classes: int) -> None:
    """--topk, --tail-classes and --draws against the teacher's classes, named as the user typed them."""
    if cfg.topk > num_classes:
        raise UsageError(
            f"--topk {cfg.topk} exceeds the teacher's {num_classes} classes; --topk {num_classes} stores every class"
        )
    if cfg.draws_per_view() and cfg.topk == num_classes:
        raise UsageError(
            f"--topk {cfg.topk} already stores all {num_classes} classes exactly: format 3's draws have nothing "
            "to draw from; drop --format-version 3"
        )
    tail = cfg.tail()
    if tail and cfg.topk == num_classes:
        raise UsageError(
            f"--topk {cfg.topk} already stores all {num_classes} classes exactly: format 2's tail has nothing "
            "to add; drop --format-version 2"
        )
    if tail and cfg.topk + tail > num_classes:
        given = "--tail-classes" if cfg.tail_classes is not None else f"the default --tail-classes {tail}"
        raise UsageError(
            f"--topk {cfg.topk} + {given} exceed the teacher's {num_classes} classes; pass --tail-classes "
            f"{num_classes - cfg.topk} or fewer"
        )


def run_build(cfg: BuildConfig, prep: PreparedBuild, out: str) -> BuildResult | None:
    """Build (or resume, or extend) the cache of ``prep`` at ``out``; every rank of a torchrun job calls
    this. Returns the result on rank 0, None on the others."""
    cfg = cfg.resolved().for_classes(prep.manifest.num_classes)  # the label scheme prepare_build settled
    target = plan_target(out, prep.manifest, cfg.epochs)  # every rank reads the same stored manifest
    manifest, store = target.manifest, target.store
    world = init_world(cfg.device)
    with contextlib.ExitStack() as stack:
        # Exits last: the lock is released and the world left before a full disk is reported.
        stack.enter_context(_reporting_disk_full(store, len(all_units(cfg.epochs, prep.num_slots, prep.unit_size))))
        # After a failure the process group is left as it is (close_world's docstring says why).
        stack.push(lambda kind, _e, _tb: close_world(world, failed=kind is not None))
        # Rank 0 takes the build lock and creates (or checks) the store first, so the others only
        # ever open a valid one and no unrelated build writes alongside this job.
        error = None
        before = None
        if world.is_main:
            try:
                before = _existing_plan(store)
                lock = build_lock(_storage(store)).acquire()
                stack.callback(lock.release)
                writer = create_or_open_writer(store, manifest)
            except Exception as e:
                error = e
        # The other ranks learn whether rank 0 succeeded instead of waiting at a barrier forever.
        failed = world.broadcast_from_main(None if error is None else str(error))
        if error is not None:
            raise error
        if failed is not None:
            raise CacheError(f"rank 0 could not open the cache: {failed}")
        if not world.is_main:
            writer = create_or_open_writer(store, manifest)
        completed = writer.completed_units()
        mine = assign(all_units(cfg.epochs, prep.num_slots, prep.unit_size), world.rank, world.size)
        pending = [u for u in mine if (u.epoch, u.index) not in completed]

        def write(epoch, unit, arrays, _write=writer.write_unit_arrays):
            failure_point("build-unit")  # tests only: a rank failing mid-build (KDCACHE_TEST_FAIL)
            if world.is_main:
                lock.check()  # a lease on an object store can be lost; stop before the next commit
            _write(epoch, unit, arrays)

        if world.is_main:
            print(plan_line(store, manifest, cfg, completed, world.size), file=sys.stderr, flush=True)
        runner = TeacherRunner(prep.model, prep.teacher.mean, prep.teacher.std, cfg)
        recorded = manifest.teacher.get("precision")
        if recorded is not None and runner.precision != recorded:  # the manifest must say what ran
            raise RuntimeError(f"the teacher runs at {runner.precision} but the manifest records {recorded}")
        storage = writer.storage

        def write_stats(epoch, unit, unit_stats):
            write_unit_stats(storage, epoch, unit, unit_stats)

        dtype = class_dtype(manifest.num_classes)
        stored = None if target.views is None else StoredViews(target.views)
        stats = run_units(
            prep.engine, runner, pending, write, dtype, cfg, world, write_stats=write_stats, stored=stored
        )
        world.barrier()
        if not world.is_main:
            return None
        final = writer.finalize()
        reader = open_cache(store)
        # Bookkeeping after the manifest: merged over every committed unit, whichever run measured it.
        merged = merge_unit_stats(storage, reader.completed_units(), DRAW_STATS if manifest.draws else STATS)
        fidelity = write_summary(storage, merged, manifest)
        outcome = _outcome(before, cfg.epochs, bool(completed), bool(pending))
        return BuildResult(
            out=reader.storage.absolute() if target.layer is None else _storage(out).absolute(),
            backend=final.backend,
            outcome="layer" if target.layer is not None and outcome == "new" else outcome,
            stats=stats,
            skipped_units=len(mine) - len(pending),
            world_size=world.size,
            epochs_complete=tuple(final.epochs_complete),
            epochs_planned=final.epochs_planned,
            views=reader.num_views(),
            bytes_on_disk=reader.bytes_on_disk(),
            fidelity=fidelity,
            layer=target.layer,
        )
    return None


@contextlib.contextmanager
def _reporting_disk_full(store: str, total_units: int) -> Iterator[None]:
    """Turn a write that found no space (ENOSPC, EDQUOT) into one line: where, how many units are
    committed, and that the same command resumes. Every write is atomic (storage/atomic.py), so a unit cut
    short left no marker and no half-written file under its final name: readers and the rerun ignore it."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        where = e.filename or _storage(store).absolute()
        committed = None
        with contextlib.suppress(Exception):  # counting only reads; a cache with no header yet has none
            committed = len(open_cache(store, allow_unfinished=True).completed_units())
        count = "no" if not committed else f"{committed} of {total_units}"
        raise DiskFullError(
            f"disk full at {where} ({e.strerror}), {count} units committed, rerun to resume: free space, then "
            "run the same command again (committed units are kept)",
            str(where),
        ) from e


@dataclass(frozen=True)
class Target:
    """Where a build writes: the cache's own store, or the layer of its teacher on the cache's views."""

    store: str  # the store to open: ``out``, or ``out/layers/<layer id>``
    manifest: Manifest  # what to build there
    layer: str | None = None  # the layer id when adding a teacher to existing views
    views: str | None = None  # the cache whose stored views the layer replays


def _same_teacher(a: Manifest, b: Manifest) -> bool:
    keys = ("model", "weights_sha256", "precision")
    return all(a.teacher.get(k) == b.teacher.get(k) for k in keys)


def plan_target(out: str, manifest: Manifest, epochs: int) -> Target:
    """New cache, resume or extend (``out`` itself), or add a teacher (a layer of ``out``'s views).

    A cache at ``out`` of another teacher (model, weights or precision) whose views are those
    ``manifest`` describes gets the teacher as a layer, laid out like the cache (its unit size) and
    covering ``epochs`` of its complete epochs. Different views are refused with the differences."""
    storage = _storage(out)
    if storage.is_folder_like_file():
        return Target(out, manifest)
    first = read_manifest(storage, BUILD_HEADER) or read_manifest(storage, MANIFEST)
    if first is None or not first.differences(manifest) or _same_teacher(first, manifest):
        return Target(out, manifest)  # new, resumed or extended; or refused with the differences as ever
    manifest = manifest.replace(unit_size=first.unit_size, epochs_planned=epochs)
    diffs = view_differences(first, manifest)
    if diffs:
        raise ManifestMismatchError(
            f"{out} holds views made with different settings, so teacher {teacher_label(manifest.teacher)} cannot "
            f"be added to them; differing field(s): {', '.join(diffs)}. Pass the settings the cache was built "
            f"with (`kdcache info {out}`), or build into a new directory",
            diffs,
        )
    complete = open_cache(storage, allow_unfinished=True).epochs_complete
    have = next((n for n in range(len(complete) + 1) if n not in complete), 0)  # leading complete epochs
    if epochs > have:
        raise UsageError(
            f"--epochs {epochs}: the views of {out} have {have} complete leading epoch(s) {complete}, and a teacher "
            f"is added only to complete views. Pass --epochs {have} or fewer, or first build the cache's own "
            f"teacher ({teacher_label(first.teacher)}) to {epochs} epochs"
            if have
            else f"the views of {out} have no complete epoch yet; finish the build of its teacher "
            f"({teacher_label(first.teacher)}) first, then add teacher {teacher_label(manifest.teacher)}"
        )
    lid = layer_id(manifest.teacher)
    return Target(layer_storage(storage, lid).where(), manifest, layer=lid, views=storage.absolute())


def plan_line(out: str, manifest: Manifest, cfg: BuildConfig, completed: set, world_size: int) -> str:
    """What the build is about to do: views to compute and the bytes they will take. The bytes come from
    the dry run's model of the writers (dry_run.estimate_bytes: a full unit's chunks or shard per view,
    plus every unit's marker and fidelity stats, each new epoch's metadata and the files written once),
    so a small cache's fixed overhead is counted, not only an ImageNet-sized unit's bytes per view."""
    # dry_run imports this module (plan_target, PreparedBuild), so it is imported when a build starts.
    from kdcache.teacher_cache.teacher_pass.dry_run import estimate_bytes, human_bytes, once_per_cache

    epochs = cfg.resolved_epochs()
    units = all_units(epochs, manifest.num_slots, manifest.unit_size)
    todo = [u for u in units if (u.epoch, u.index) not in completed]
    views = sum(u.size for u in todo)
    storage = _storage(out)
    # The files written once that are not there yet ("more" is what the cache grows by: a rewritten
    # manifest or fidelity summary replaces one of about its size).
    fixed = tuple(n for n in once_per_cache(manifest.backend, storage.is_local) if not storage.exists(n))
    new_epochs = len({u.epoch for u in todo} - {e for e, _ in completed})  # epochs whose metadata is not there
    estimate = estimate_bytes(manifest, todo, new_epochs, fixed, epochs)
    per_view = estimate.expected / views if views else 0.0
    overhead = "; a small cache is mostly fixed overhead" if per_view > 2 * estimate.unit_bytes_per_view else ""
    return (
        f"build: {views:,} views to compute ({epochs} epoch(s) x {manifest.num_slots:,} slots, "
        f"{len(units) - len(todo)} of {len(units)} units already done) on {world_size} process(es); "
        f"about {human_bytes(estimate.expected)} more, {per_view:,.1f} B/view (a full unit's "
        f"{estimate.unit_bytes_per_view:,.1f} B/view plus per-unit, per-epoch and per-cache files{overhead})"
    )


def _storage(out: str) -> Storage:
    return open_storage(out)


def _existing_plan(out: str) -> int | None:
    """Epochs planned by a cache already at ``out`` (None: no cache there yet)."""
    storage = _storage(out)
    if storage.is_folder_like_file():
        return None
    m = read_manifest(storage, BUILD_HEADER) or read_manifest(storage, MANIFEST)
    return None if m is None else m.epochs_planned


def _outcome(planned_before: int | None, epochs: int, had_units: bool, worked: bool) -> str:
    if planned_before is None or not had_units:
        return "new"
    if epochs > planned_before:
        return "extended"
    return "resumed" if worked else "complete"
