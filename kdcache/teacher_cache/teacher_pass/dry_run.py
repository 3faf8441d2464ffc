"""``kdcache build --dry-run``: what a build would do — views, work units, objects, bytes, RAM per rank,
hours — with nothing written.

Everything here only reads: the resolved inputs of :func:`~.pipeline.prepare_build`, the destination's
stored header and committed units (:func:`~.pipeline.plan_target`, :func:`inspect_store`), and, unless
``--assume-rate`` is given, a few batches rendered and passed through the teacher in memory. The writer
code decides the object and byte counts (:func:`object_counts`, :func:`estimate_bytes`), so a change
there changes the plan; tests/test_build_dry_run.py compares both with a real build's files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdcache.errors import UsageError
from kdcache.storage import is_temp, open_storage
from kdcache.storage.locking import LOCK_NAME
from kdcache.teacher_cache.store import (
    ManifestMismatchError,
    NotACacheError,
    open_cache,
    read_manifest,
)
from kdcache.teacher_cache.store.fidelity import FIDELITY
from kdcache.teacher_cache.store.labels import stored_layout
from kdcache.teacher_cache.store.layout import BUILD_HEADER, MANIFEST
from kdcache.teacher_cache.store.manifest import Manifest
from kdcache.teacher_cache.store.wds.tar import build_shard

# The writer's own documents, so the metadata bytes are the writer's and not a copy of its layout.
from kdcache.teacher_cache.store.zarr.writer import _epoch_template, _root_doc
from kdcache.teacher_cache.teacher_pass.config import BuildConfig
from kdcache.teacher_cache.teacher_pass.loop import BuildBatches, StoredViews, human_duration
from kdcache.teacher_cache.teacher_pass.pipeline import PreparedBuild, plan_target
from kdcache.teacher_cache.teacher_pass.runner import TeacherRunner
from kdcache.teacher_cache.teacher_pass.schedule import BatchSchedule, Unit, all_units, assign

# Compressed / raw bytes of each zarr field, from benchmarks/epoch_load.py at ImageNet scale (units of
# 10,240 views, k = 10, 1000 classes; docs/benchmarks.md "Per field (zarr)"): sample_id 1.61 of 4 B,
# repeat < 0.1 of 1, params 13.48 of 28, top-k log-probs 12.43 of 20, top-k classes 12.54 of 20; the
# tail's from benchmarks/label_fidelity.py on a real teacher (tail_class 1.25 B per int16 id, tail_code
# 0.128 B per 4-bit code). digest is stored raw (no compressor). A field not listed here (format 3's
# draw_gap) is counted raw: its compression has not been measured.
ZARR_RATIO: dict[str, float] = {
    "sample_id": 1.61 / 4,
    "repeat": 0.1,
    "params": 13.48 / 28,
    "topk_logprob": 12.43 / 20,
    "topk_class": 12.54 / 20,
    "tail_class": 1.25 / 2,
    "tail_code": 0.128,
}
# zarr chunk framing: blosc's header (16 B, also when it stores a block raw) and the crc32c (4 B).
BLOSC_HEADER, CRC = 16, 4
# fidelity/eEEEEE-uUUUUUU.json: ~130 B of sums and maxima, then ~12 B per non-empty histogram bin
# (200 'outside' bins, 242 'kl' bins; store/fidelity.py). fidelity.json adds ~700 B of text.
FIDELITY_BASE, FIDELITY_PER_BIN, FIDELITY_BINS = 130, 12, (200, 242)
FIDELITY_SUMMARY_TEXT = 700
# loop.run_units: the DataLoader's prefetch_factor when it has workers.
PREFETCH = 4
# The unit being assembled plus those queued on the writer thread (run_units keeps at most 2 waiting,
# 4 futures with the fidelity stats) and the one being written.
UNITS_IN_MEMORY = 4
# A rate measured on this many batches (the first is a warm-up for the teacher), or fewer once the
# measurement has run this long.
MEASURE_BATCHES = 4
MEASURE_SECONDS = 60.0
# Schedule bytes per unit are measured on a prefix of the cache's units of at most this many units.
SCHEDULE_SAMPLE_UNITS = 4096


@dataclass(frozen=True)
class Existing:
    """What a destination already holds (read, never written)."""

    header: Manifest | None  # the stored build header or manifest; None: nothing there yet
    completed: frozenset[tuple[int, int]]  # committed (epoch, unit)
    bytes_on_disk: int
    present: frozenset[str]  # which of the cache's once-per-cache files exist


@dataclass(frozen=True)
class ByteEstimate:
    expected: int  # what the written objects should total
    upper: int  # with every compressed chunk stored raw (zarr) / the same (wds: nothing is compressed)
    unit_bytes_per_view: float  # a full unit's chunks (zarr, compressed as at scale) or tar shard, per view


@dataclass(frozen=True)
class Rate:
    views_per_s: float | None  # per rank; None: nothing to compute, nothing measured
    basis: str


@dataclass(frozen=True)
class BuildPlan:
    """The numbers of a build, computed without running it (every count is of the whole cache unless it
    says new/left)."""

    destination: str  # the cache's path or URL
    store: str  # where this build writes: the destination, or its teacher layer
    registry: str | None  # how the registry chose the destination; None with --out
    state: str  # new | resume | extend | complete | layer
    backend: str
    format_version: int
    label_scheme: str
    epochs: int
    num_samples: int
    repeats: int
    views_per_epoch: int
    unit_size: int
    units_per_epoch: int
    last_unit_views: int
    num_fields: int
    views_done: int
    units_done: int
    world_size: int
    rank_views: int  # the busiest rank's views to compute
    rank_units: int
    objects_total: int
    objects_new: int
    objects_rule: str
    bytes_now: int  # already at the destination's store
    bytes: ByteEstimate  # the store when complete
    bytes_new: int  # expected bytes this build writes
    schedule_bytes_per_unit: float
    ram_schedule: int
    ram_in_flight: int
    batches_in_flight: int
    ram_units: int
    teacher_bytes: int
    device: str
    batch_size: int
    image_size: int
    workers: int
    rate: Rate

    @property
    def views_total(self) -> int:
        return self.epochs * self.views_per_epoch

    @property
    def views_left(self) -> int:
        return self.views_total - self.views_done

    @property
    def units_total(self) -> int:
        return self.epochs * self.units_per_epoch

    @property
    def teacher_on_host(self) -> bool:
        return not self.device.startswith("cuda")

    @property
    def ram_total(self) -> int:
        host_teacher = self.teacher_bytes if self.teacher_on_host else 0
        return self.ram_schedule + self.ram_in_flight + self.ram_units + host_teacher

    @property
    def hours(self) -> float | None:
        """views left / (views/s per rank x ranks), in hours; None without a rate."""
        if self.views_left == 0:
            return 0.0
        if not self.rate.views_per_s:
            return None
        return hours(self.views_left, self.rate.views_per_s, self.world_size)


def hours(views: int, rate: float, world_size: int) -> float:
    return views / (rate * world_size) / 3600


def world_size_for(cfg: BuildConfig) -> int:
    """--world-size, else $WORLD_SIZE (torchrun's), else 1."""
    if cfg.world_size is not None:
        return cfg.world_size
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"$WORLD_SIZE is {text!r}: pass --world-size N (N >= 1) to plan for N ranks")
    return value


# ---- objects and bytes: what the writers in store/zarr and store/wds put, per cache, epoch and unit ----


def once_per_cache(backend: str, local: bool) -> tuple[str, ...]:
    """Files a build writes once: the build header, the final manifest, the fidelity summary, zarr's root
    group, and the flock file (on object stores the lease object is deleted when the build ends)."""
    names = (BUILD_HEADER, MANIFEST, FIDELITY) + (("zarr.json",) if backend == "zarr" else ())
    return names + ((LOCK_NAME,) if local else ())


def per_epoch_objects(backend: str, num_fields: int) -> int:
    """zarr: the epoch group's zarr.json and one per field array (ZarrWriter._template); wds: none."""
    return 1 + num_fields if backend == "zarr" else 0


def per_unit_objects(backend: str, num_fields: int) -> int:
    """zarr: a chunk per field and the commit marker done/eEEEEE/uUUUUUU.json; wds: the tar shard. Both: the
    unit's fidelity stats fidelity/eEEEEE-uUUUUUU.json (written after the commit)."""
    return (num_fields + 2) if backend == "zarr" else 2


def object_counts(backend: str, num_fields: int, epochs: int, units_per_epoch: int, local: bool) -> int:
    """Files (objects) of a complete cache: per cache + epochs x per epoch + units x per unit."""
    return (
        len(once_per_cache(backend, local))
        + epochs * per_epoch_objects(backend, num_fields)
        + epochs * units_per_epoch * per_unit_objects(backend, num_fields)
    )


def objects_rule(backend: str, num_fields: int, local: bool) -> str:
    fixed = once_per_cache(backend, local)
    if backend == "zarr":
        return (
            f"{len(fixed)} per cache ({', '.join(fixed)}), {1 + num_fields} per epoch (group + {num_fields} "
            f"array zarr.json), {num_fields + 2} per unit ({num_fields} chunks, commit marker, fidelity stats)"
        )
    return f"{len(fixed)} per cache ({', '.join(fixed)}), 2 per unit (tar shard, fidelity stats)"


def fidelity_unit_bytes(views: int) -> int:
    """About the size of a unit's fidelity stats: every view may land in its own histogram bin."""
    bins = sum(min(views, b) for b in FIDELITY_BINS)
    return FIDELITY_BASE + FIDELITY_PER_BIN * bins


# ZarrWriter._write's commit marker, json.dumps of {"epoch": E, "unit": U, "slots": [A, B]} and a newline:
# this text around the four numbers (counted by digits, not dumped: a 610-epoch plan has 76,860 markers).
_MARKER_TEXT = len(json.dumps({"epoch": 0, "unit": 0, "slots": [0, 0]})) - 4 + 1


def _marker_bytes(unit: Unit) -> int:
    numbers = (unit.epoch, unit.index, unit.start, unit.start + unit.size)
    return _MARKER_TEXT + sum(len(str(n)) for n in numbers)


def _field_widths(manifest: Manifest) -> dict[str, int]:
    """Raw bytes of one view's row of each stored field."""
    return {
        name: int(np.dtype(dtype).itemsize * math.prod(row)) for name, (dtype, row) in stored_layout(manifest).items()
    }


def zarr_chunk_bytes(manifest: Manifest, views: int) -> tuple[int, int]:
    """(expected, upper) bytes of one unit's chunks. zarr stores every chunk of an array at the full
    unit size, the last unit's padded with zeros, so the raw bound counts unit_size rows."""
    expected = upper = 0
    for name, width in _field_widths(manifest).items():
        raw = manifest.unit_size * width
        if name == "digest":  # no compressor: raw bytes and the crc, exactly
            expected += raw + CRC
            upper += raw + CRC
            continue
        ratio = ZARR_RATIO.get(name, 1.0)
        expected += BLOSC_HEADER + CRC + min(raw, math.ceil(views * width * ratio))
        upper += BLOSC_HEADER + CRC + raw
    return expected, upper


def wds_shard_bytes(manifest: Manifest, unit: Unit) -> int:
    """The tar shard of a unit of this size, built as WdsWriter builds it (zeros for the values: the
    .npy members are not compressed, so only the meta.json member's padding could differ)."""
    stored = {name: np.zeros((unit.size, *row), dtype=dtype) for name, (dtype, row) in stored_layout(manifest).items()}
    return len(
        build_shard(unit.epoch, unit.index, (unit.start, unit.start + unit.size), stored, manifest.format_version)
    )


def epoch_metadata_bytes(manifest: Manifest) -> int:
    """zarr: the epoch's group and array documents, as ZarrWriter writes them (for epoch 0; the epoch
    number's digits are the only difference between epochs below 100,000)."""
    docs, _ = _epoch_template(manifest, 0)
    return sum(len(v.to_bytes()) for k, v in docs.items() if k.startswith("e"))


def fixed_bytes(manifest: Manifest, name: str, epochs: int, views: int) -> int:
    if name == BUILD_HEADER:
        return len(manifest.replace(epochs_planned=epochs, epochs_complete=()).to_json().encode())
    if name == MANIFEST:
        return len(manifest.replace(epochs_planned=epochs, epochs_complete=tuple(range(epochs))).to_json().encode())
    if name == FIDELITY:
        return FIDELITY_SUMMARY_TEXT + fidelity_unit_bytes(views)
    if name == "zarr.json":
        return len(_root_doc())
    return 0  # the flock file stays empty


def estimate_bytes(
    manifest: Manifest, units: list[Unit], new_epochs: int, fixed: tuple[str, ...], epochs: int
) -> ByteEstimate:
    """Bytes the objects of ``units``, ``new_epochs`` epochs' metadata and the once-per-cache files
    ``fixed`` will take (a cache of ``epochs`` epochs)."""
    by_size: dict[int, tuple[int, int]] = {}  # an epoch has at most two unit sizes: full and the last
    expected = upper = 0
    for u in units:
        if u.size not in by_size:
            if manifest.backend == "zarr":
                chunks = zarr_chunk_bytes(manifest, u.size)
            else:
                shard = wds_shard_bytes(manifest, u)
                chunks = (shard, shard)
            by_size[u.size] = (chunks[0] + fidelity_unit_bytes(u.size), chunks[1] + fidelity_unit_bytes(u.size))
        e, up = by_size[u.size]
        marker = _marker_bytes(u) if manifest.backend == "zarr" else 0
        expected += e + marker
        upper += up + marker
    meta = new_epochs * epoch_metadata_bytes(manifest) if manifest.backend == "zarr" and new_epochs else 0
    once = sum(fixed_bytes(manifest, name, epochs, epochs * manifest.num_slots) for name in fixed)
    if manifest.backend == "zarr":
        per_view = zarr_chunk_bytes(manifest, manifest.unit_size)[0] / manifest.unit_size
    else:
        per_view = wds_shard_bytes(manifest, Unit(0, 0, 0, manifest.unit_size)) / manifest.unit_size
    return ByteEstimate(expected + meta + once, upper + meta + once, per_view)


# ---- what is already there ----


def inspect_store(store: str, manifest: Manifest) -> Existing:
    """The destination as the build would find it, read-only; raises what create_or_open_writer would
    (a file, a folder of something else, a cache of other settings), so a dry run is refused alike."""
    storage = open_storage(store)
    root = storage.location
    if storage.is_folder_like_file():
        raise NotACacheError(f"{root} is a file; give a directory for the cache")
    stored = read_manifest(storage, BUILD_HEADER) or read_manifest(storage, MANIFEST)
    if stored is None:
        others = sorted(n for n in storage.listdir() if not is_temp(n) and n != LOCK_NAME)
        if others:
            raise NotACacheError(
                f"{root} is not empty ({', '.join(others[:5])}) and holds no kdcache build; "
                f"choose a new or empty directory for the cache"
            )
        present = frozenset(n for n in (LOCK_NAME,) if storage.exists(n))
        return Existing(None, frozenset(), 0, present)
    diffs = stored.differences(manifest)
    if diffs:
        raise ManifestMismatchError(
            f"{root} holds a cache built with different settings; differing field(s): {', '.join(diffs)}. "
            f"Resume with the original settings, or build into a new directory",
            diffs,
        )
    reader = open_cache(storage, allow_unfinished=True)
    present = frozenset(n for n in once_per_cache(stored.backend, storage.is_local) if storage.exists(n))
    return Existing(stored, frozenset(reader.completed_units()), reader.bytes_on_disk(), present)


# ---- RAM ----


def _schedule_structures(units: list[Unit], batch_size: int) -> tuple[object, ...]:
    """What a rank holds for its schedule before its first batch: run_build's list of units (every unit
    of every epoch; the rank's share and its pending units are lists over the same objects) and the
    BatchSchedule loop.run_units builds over them, which computes each batch when it is asked for."""
    fresh = [Unit(u.epoch, u.index, u.start, u.size) for u in units]  # new objects, as all_units makes them
    return fresh, fresh[:], BatchSchedule(fresh, batch_size)


def schedule_bytes_per_unit(units: list[Unit], batch_size: int) -> float:
    """Host bytes per work unit that a rank's schedule takes, measured with tracemalloc (numpy's buffers
    are traced too) on up to SCHEDULE_SAMPLE_UNITS units. The same for any unit size, batch size and
    --epochs: the batches are computed one at a time, never laid out (benchmarks/performance/
    schedule_memory.py measures the whole process at 2 and 610 ImageNet epochs)."""
    sample = units[:SCHEDULE_SAMPLE_UNITS]
    if not sample:
        return 0.0
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = _schedule_structures(sample, batch_size)
        used = tracemalloc.get_traced_memory()[0] - before
        del held
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return used / len(sample)


def teacher_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


# ---- rate ----


def measure_rate(cfg: BuildConfig, prep: PreparedBuild, units: list[Unit], stored: str | None) -> Rate:
    """Views/s per rank on this machine: the first batches of ``units`` rendered in this process and run
    through the teacher on --device, in memory. The build overlaps rendering (in --workers processes)
    with the teacher, so the rank runs at the slower of the two sides; with no workers, at their sum.
    The teacher side is its forward pass (the top-k and fidelity figures the build adds are small)."""
    needed: list[Unit] = []
    views = 0
    for u in units:  # enough units for MEASURE_BATCHES batches (a unit may hold less than one)
        needed.append(u)
        views += u.size
        if views >= MEASURE_BATCHES * cfg.batch_size:
            break
    work = BatchSchedule(needed, cfg.batch_size)[:MEASURE_BATCHES]
    data = BuildBatches(prep.engine, work, None if stored is None else StoredViews(stored))
    # No torch.compile here: it would write its compile cache (and take minutes); the basis says so.
    runner = TeacherRunner(prep.model, prep.teacher.mean, prep.teacher.std, dataclasses.replace(cfg, compile=False))
    render_s = teacher_s = first_s = 0.0
    render_views = teacher_views = first_views = batches_run = 0
    start = time.perf_counter()
    for i in range(len(data)):
        t0 = time.perf_counter()
        batch = data[i]
        t1 = time.perf_counter()
        float(runner.logits(batch["images"]).sum())  # the forward; the sum syncs the device
        t2 = time.perf_counter()
        n = len(batch["slots"])
        render_s, render_views, batches_run = render_s + (t1 - t0), render_views + n, batches_run + 1
        if i == 0:
            first_s, first_views = t2 - t1, n  # warm-up: allocations, autotuning, lazy initialisation
        else:
            teacher_s, teacher_views = teacher_s + (t2 - t1), teacher_views + n
        if t2 - start > MEASURE_SECONDS and i >= 1:
            break
    warm = " after a warm-up batch" if teacher_views else ""
    if not teacher_views:  # one batch only: keep its forward, warm-up and all (errs slow)
        teacher_s, teacher_views = first_s, first_views
    render = render_views / max(render_s, 1e-9)
    teacher = teacher_views / max(teacher_s, 1e-9)
    if cfg.workers:
        feeders = min(cfg.workers, os.cpu_count() or 1)
        rate = min(teacher, feeders * render)
        side = "the teacher" if teacher <= feeders * render else f"rendering ({feeders} worker(s) on this machine)"
        how = f"the build runs at the slower side, {side}"
        if not cfg.device.startswith("cuda"):
            how += "; on cpu the workers share the cores with the teacher, so expect less"
    else:
        rate = 1 / (1 / render + 1 / teacher)
        how = "--workers 0: rendering and teacher one after the other"
    basis = (
        f"measured here on {batches_run} batch(es) of up to {cfg.batch_size} views: render {render:,.1f} views/s "
        f"per worker, teacher {teacher:,.1f} views/s on {cfg.device}{warm}"
        f"{' (without --compile: it would write its compile cache)' if cfg.compile else ''}; {how}"
    )
    return Rate(rate, basis)


# ---- the plan ----


def plan_build(cfg: BuildConfig, prep: PreparedBuild, out: str, *, registry: str | None = None) -> BuildPlan:
    """The plan of building ``prep`` at ``out`` (what run_build would do), reading only."""
    cfg = cfg.resolved()
    target = plan_target(out, prep.manifest, cfg.epochs)  # the same resolution as run_build: read-only
    existing = inspect_store(target.store, target.manifest)
    return make_plan(
        target.manifest,
        epochs=cfg.epochs,
        world_size=world_size_for(cfg),
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        device=cfg.device,
        existing=existing,
        local=open_storage(target.store).is_local,
        teacher_bytes=teacher_bytes(prep.model),
        destination=out,
        store=target.store,
        registry=registry,
        layer=target.layer is not None,
        assume_rate=cfg.assume_rate,
        measure=lambda units: measure_rate(cfg, prep, units, target.views),
    )


NOTHING_THERE = Existing(None, frozenset(), 0, frozenset())


def make_plan(
    manifest: Manifest,
    *,
    epochs: int,
    world_size: int,
    batch_size: int,
    workers: int,
    device: str = "cpu",
    existing: Existing = NOTHING_THERE,
    local: bool = True,
    teacher_bytes: int = 0,
    destination: str = "",
    store: str | None = None,
    registry: str | None = None,
    layer: bool = False,
    assume_rate: float | None = None,
    measure: Callable[[list[Unit]], Rate] | None = None,
) -> BuildPlan:
    """The plan's numbers from the manifest to build and what the store holds: no I/O but ``measure``
    (given the busiest rank's pending units; None and no ``assume_rate``: no rate)."""
    units = all_units(epochs, manifest.num_slots, manifest.unit_size)
    planned = {(u.epoch, u.index) for u in units}
    done = existing.completed & planned
    pending = [u for u in units if (u.epoch, u.index) not in done]
    # run_build: rank r takes units r::W of every planned unit, then skips the committed ones.
    shares = [[u for u in assign(units, r, world_size) if (u.epoch, u.index) not in done] for r in range(world_size)]
    busiest = max(shares, key=lambda share: sum(u.size for u in share))
    num_fields = len(stored_layout(manifest))
    per_epoch = -(-manifest.num_slots // manifest.unit_size)

    if existing.header is None:
        state = "layer" if layer else "new"
    elif not pending:
        state = "complete"
    elif epochs > existing.header.epochs_planned:
        state = "extend"
    else:
        state = "resume"

    fixed = once_per_cache(manifest.backend, local)
    whole = estimate_bytes(manifest, units, epochs, fixed, epochs)
    new_epochs = len({u.epoch for u in pending} - {e for e, _ in done})  # epochs whose metadata is not there
    if not pending:
        bytes_new = 0
    elif existing.header is None:
        bytes_new = whole.expected
    else:  # the manifest and fidelity summary are rewritten at the end
        rewritten = tuple(n for n in fixed if n not in existing.present or n in (MANIFEST, FIDELITY))
        bytes_new = estimate_bytes(manifest, pending, new_epochs, rewritten, epochs).expected
    objects_new = (
        len([n for n in fixed if n not in existing.present])
        + new_epochs * per_epoch_objects(manifest.backend, num_fields)
        + len(pending) * per_unit_objects(manifest.backend, num_fields)
    )

    size = manifest.image_size
    # Prefetched batches, the one in the teacher's hands and, on CUDA, its pinned copy (pin_memory).
    in_flight = (workers * PREFETCH if workers else 0) + 1 + device.startswith("cuda")
    raw_view = sum(_field_widths(manifest).values())
    per_unit_schedule = schedule_bytes_per_unit(units, batch_size)
    rank_views = sum(u.size for u in busiest)

    if not pending:
        rate = Rate(None, "nothing to compute")
    elif assume_rate is not None:
        rate = Rate(assume_rate, "assumed (--assume-rate)")
    elif measure is not None:
        rate = measure(busiest or pending)
    else:
        rate = Rate(None, "not measured")

    return BuildPlan(
        destination=destination,
        store=destination if store is None else store,
        registry=registry,
        state=state,
        backend=manifest.backend,
        format_version=manifest.format_version,
        label_scheme=manifest.label_scheme,
        epochs=epochs,
        num_samples=int(manifest.dataset.get("num_samples", manifest.num_slots)),
        repeats=manifest.repeats,
        views_per_epoch=manifest.num_slots,
        unit_size=manifest.unit_size,
        units_per_epoch=per_epoch,
        last_unit_views=manifest.num_slots - (per_epoch - 1) * manifest.unit_size,
        num_fields=num_fields,
        views_done=sum(u.size for u in units if (u.epoch, u.index) in done),
        units_done=len(done),
        world_size=world_size,
        rank_views=rank_views,
        rank_units=len(busiest),
        objects_total=object_counts(manifest.backend, num_fields, epochs, per_epoch, local),
        objects_new=objects_new,
        objects_rule=objects_rule(manifest.backend, num_fields, local),
        bytes_now=existing.bytes_on_disk,
        bytes=whole,
        bytes_new=bytes_new,
        schedule_bytes_per_unit=per_unit_schedule,
        ram_schedule=int(per_unit_schedule * len(units)),
        ram_in_flight=in_flight * batch_size * size * size * 3,  # uint8 NHWC views
        batches_in_flight=in_flight,
        ram_units=min(UNITS_IN_MEMORY, len(busiest)) * manifest.unit_size * raw_view,
        teacher_bytes=teacher_bytes,
        device=device,
        batch_size=batch_size,
        image_size=size,
        workers=workers,
        rate=rate,
    )


# ---- text ----


def human_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def _bytes_line(p: BuildPlan) -> str:
    b = p.bytes
    rest = human_bytes(max(b.expected - b.unit_bytes_per_view * p.views_total, 0))
    if p.backend == "zarr":
        detail = (
            f"at most {human_bytes(b.upper)} (chunks uncompressed); a full unit's chunks take "
            f"{b.unit_bytes_per_view:,.1f} B/view (compression as measured at ImageNet scale, benchmarks/"
            f"epoch_load.py; small units compress less), the rest, {rest}, is metadata, commit markers, fidelity "
            "stats, chunk framing and the last unit's padding"
        )
    else:
        detail = (
            f"a full unit's tar shard takes {b.unit_bytes_per_view:,.1f} B/view (uncompressed .npy members in "
            f"512-byte tar blocks), the rest, {rest}, is the header, manifest, fidelity stats and the last units' "
            "tar blocks"
        )
    return (
        f"  bytes          about {human_bytes(b.expected)} when complete "
        f"({b.expected / max(p.views_total, 1):,.1f} B/view); {detail}"
    )


def _ram_lines(p: BuildPlan) -> list[str]:
    if not p.views_left:
        return ["  RAM per rank   little: nothing to compute (the build finds every unit committed)"]
    pinned = "" if p.teacher_on_host else ", 1 pinned copy"
    teacher = (
        f", teacher weights {human_bytes(p.teacher_bytes)}"
        if p.teacher_on_host
        else f"; teacher weights {human_bytes(p.teacher_bytes)} on {p.device}, not counted"
    )
    return [
        f"  RAM per rank   about {human_bytes(p.ram_total)} of host memory: schedule {human_bytes(p.ram_schedule)} "
        f"({p.schedule_bytes_per_unit:,.0f} B per unit of the {p.units_total:,} units, measured; batches are "
        "computed as they are rendered, so the views per unit do not count), views "
        f"in flight {human_bytes(p.ram_in_flight)} ({p.batches_in_flight} batch(es) of {p.batch_size} x "
        f"{p.image_size}x{p.image_size}x3 B: --workers {p.workers} x prefetch {PREFETCH} in shared memory, 1 in "
        f"the teacher's hands{pinned}), units being written {human_bytes(p.ram_units)}{teacher}",
        "                 not counted: the interpreter and libraries, each DataLoader worker's process, the "
        "dataset's file list, activations",
    ]


def _time_line(p: BuildPlan) -> str:
    h = p.hours
    if p.views_left == 0:
        return "  time           0 h: nothing to compute"
    if h is None or not p.rate.views_per_s:
        return "  time           unknown (no rate)"
    return (
        f"  time           {p.views_left:,} views / ({p.rate.views_per_s:,.4g} views/s x {p.world_size} rank(s)) "
        f"= {h:,.3f} h ({human_duration(h)})"
    )


def format_plan(p: BuildPlan) -> str:
    """The dry run's report, one aligned line per fact."""
    state = {
        "new": "a new cache",
        "resume": "resumes an unfinished build",
        "extend": "extends the cache to more epochs",
        "complete": "every planned unit is already committed: nothing to compute",
        "layer": "adds this teacher as a layer on the cache's views",
    }[p.state]
    store = "" if p.store == p.destination else f"; writes {p.store}"
    full = p.units_per_epoch - (p.last_unit_views != p.unit_size)
    last = "" if p.last_unit_views == p.unit_size else f", the last {p.last_unit_views:,}"
    rate = f"{p.rate.views_per_s:,.4g} views/s per rank, " if p.rate.views_per_s else ""
    lines = [
        "kdcache build --dry-run: the plan of this build; nothing was written",
        f"  destination    {p.destination} ({p.backend}, format {p.format_version}, {p.label_scheme}): {state}{store}",
        f"  registry       {p.registry}" if p.registry else "",
        f"  views          {p.epochs:,} epoch(s) x {p.views_per_epoch:,} views = {p.views_total:,} views "
        f"({p.num_samples:,} samples, repeats {p.repeats}: an epoch has as many views as samples, rounded "
        "down to even)",
        f"  done           {p.views_done:,} of {p.views_total:,} views ({p.units_done:,} of {p.units_total:,} units) "
        f"already committed; {p.views_left:,} views to compute",
        f"  units          {p.units_per_epoch:,} per epoch of {p.unit_size:,} views ({full:,} full{last}), "
        f"{p.units_total:,} in all; {p.world_size} rank(s), rank r builds units r::{p.world_size}: "
        f"the busiest has {p.rank_units:,} to do ({p.rank_views:,} views)",
        f"  objects        {p.objects_total:,} files when complete, {p.objects_new:,} of them new: {p.objects_rule}",
        _bytes_line(p),
        f"                 this build writes about {human_bytes(p.bytes_new)}; {human_bytes(p.bytes_now)} already there"
        if p.bytes_now
        else "",
        *_ram_lines(p),
        f"  rate           {rate}{p.rate.basis}",
        _time_line(p),
    ]
    return "\n".join(line for line in lines if line)
