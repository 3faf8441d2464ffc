"""``kdcache verify --repair``: find the committed units whose stored files are damaged, remove their commit
markers, and rewrite them with the build that wrote them.

Every committed unit of every store of the cache (its own, then each teacher layer) is read back through
its reader, which checks what the format checks: zarr's crc32c per chunk and the decoded size, the wds
shard's tar structure and per-member CRC32. A damaged unit loses its marker (zarr: ``done/eE/uU.json``;
wds: the shard itself, which is its own marker), so it is an ordinary missing unit, and a build with the
cache's recorded settings (the manifest: teacher, weights, data, recipe, seed, labels, format, unit size)
rewrites exactly the missing units: the views and the teacher are deterministic, so the repaired cache has
the content hash it had before the damage. Without the teacher's weights or the data the markers are still
removed and the report carries the ``kdcache build`` command that finishes the repair (command.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from kdcache.models.precision import FP32, parse_precision
from kdcache.storage import build_lock
from kdcache.teacher_cache.store import CorruptShardError, Manifest, open_cache, open_layers
from kdcache.teacher_cache.store.base import CacheReader
from kdcache.teacher_cache.store.errors import CacheError
from kdcache.teacher_cache.store.layers import teacher_label
from kdcache.teacher_cache.store.wds.layout import shard_key
from kdcache.teacher_cache.store.zarr.layout import marker_key
from kdcache.teacher_cache.teacher_pass.command import extend_command
from kdcache.teacher_cache.teacher_pass.config import BuildConfig
from kdcache.teacher_cache.teacher_pass.pipeline import PreparedBuild, prepare_build, run_build


class RepairError(CacheError):
    """Damage that rewriting units cannot mend (an epoch's metadata), or a rebuild that would differ."""


@dataclass(frozen=True)
class Damage:
    """One committed unit whose stored files do not read back."""

    epoch: int
    unit: int
    path: str  # the damaged (or missing) file
    reason: str  # what the reader found
    marker: str  # the key of the unit's commit marker in its store: what repair removes
    marker_path: str  # ... as a full path or URL, for messages

    def describe(self) -> str:
        return f"epoch {self.epoch} unit {self.unit}: {self.path}: {self.reason}"


@dataclass
class StoreRepair:
    """What repair found and did in one store of the cache (its own, or the layer of one teacher)."""

    layer: str | None  # None: the cache's own store; else its folder under layers/
    teacher: str
    units_read: int
    damage: list[Damage]
    # (epoch, unit) of complete epochs (as the manifest records them) with no committed unit: markers an
    # earlier repair removed without rewriting, or files deleted by hand. The build rewrites them too.
    missing: list[tuple[int, int]]
    command: str  # the `kdcache build` that rewrites this store's missing units
    missing_input: str | None = None  # why it could not be rewritten here (weights or data gone)
    rewritten: int = 0  # units the build wrote
    still_damaged: list[Damage] = field(default_factory=list)  # a read-back after the rewrite

    @property
    def needs_build(self) -> bool:
        return bool(self.damage or self.missing)


@dataclass
class RepairReport:
    cache: str
    stores: list[StoreRepair]

    @property
    def damage(self) -> list[Damage]:
        return [d for s in self.stores for d in s.damage]

    @property
    def missing(self) -> int:
        return sum(len(s.missing) for s in self.stores)

    @property
    def repaired(self) -> bool:
        """Nothing was damaged or missing, or every such unit was rewritten and now reads back."""
        return all(s.missing_input is None and not s.still_damaged for s in self.stores)


def find_damage(reader: CacheReader) -> tuple[int, list[Damage]]:
    """(units read, the damaged ones) over every committed unit of ``reader``'s store. A complete epoch is
    read in one go first; only an epoch that fails is read unit by unit, to name each damaged unit."""
    by_epoch: dict[int, list[int]] = {}
    for e, u in reader.completed_units():
        by_epoch.setdefault(e, []).append(u)
    damage = []
    for epoch in sorted(by_epoch):
        units = sorted(by_epoch[epoch])
        if len(units) == reader.num_units:
            try:
                reader.load_epoch(epoch)
                continue
            except CorruptShardError:
                pass  # find which units
        for unit in units:
            try:
                reader.read_unit(epoch, unit)
            except CorruptShardError as e:
                path = str(e.path)
                if Path(path).name == "zarr.json":
                    raise RepairError(
                        f"{path} (metadata of epoch {epoch}) is damaged: rewriting units cannot mend it. Build "
                        "the cache again into a new directory"
                    ) from e
                reason = str(e).removeprefix(f"corrupt cache file {path}: ").split(". ", 1)[0]
                marker = _marker(reader.manifest, epoch, unit)
                damage.append(Damage(epoch, unit, path, reason, marker, reader.storage.where(marker)))
    return sum(len(u) for u in by_epoch.values()), damage


def _marker(m: Manifest, epoch: int, unit: int) -> str:
    """The key whose presence commits a unit: zarr's marker file, or the wds shard (written whole, last)."""
    return marker_key(epoch, unit) if m.backend == "zarr" else shard_key(epoch, unit)


def rebuild_config(
    m: Manifest,
    cache: str,
    *,
    data: str | None = None,
    teacher_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    workers: int = 2,
) -> BuildConfig:
    """The build that wrote ``m``'s store, from the manifest: what determines the content as recorded (a
    moved ``data`` or ``teacher_weights`` may be given), how fast as asked."""
    t = m.teacher
    recorded = t.get("weights")
    weights = teacher_weights or (str(recorded) if recorded and recorded != "hub" else None)
    dtype, _ = parse_precision(t.get("precision", FP32))
    return BuildConfig(
        teacher=str(t.get("name") or t["id"]),
        data=data or str(m.dataset["source"]),
        out=cache,
        format=m.backend,
        epochs=m.epochs_planned,
        repeats=m.repeats,
        topk=m.topk,
        format_version=m.format_version,
        tail_classes=m.tail_classes if m.format_version == 2 else None,
        draws=m.draws if m.format_version == 3 else None,
        image_size=m.image_size,
        seed=m.seed,
        recipe=str(m.recipe.get("name") or "seed"),
        teacher_weights=weights,
        batch_size=batch_size,
        workers=workers,
        device=device,
        amp="off" if dtype is None else str(t["precision"]).split("-", 1)[0],
        unit_size=m.unit_size,
        progress=False,
    )


def rebuild_command(m: Manifest, cfg: BuildConfig) -> str:
    """The ``kdcache build`` command line of ``cfg``: command.py's, for the cache's settings, plus what it
    leaves to the defaults but a repair must repeat (the unit size, the teacher's precision and device, a
    weights file that is not there now)."""
    parts = shlex.split(extend_command(m, str(cfg.out), m.epochs_planned))
    parts[parts.index("--data") + 1] = cfg.data
    if cfg.teacher_weights and "--teacher-weights" not in parts:
        parts[parts.index("--data") : parts.index("--data")] = ["--teacher-weights", cfg.teacher_weights]
    parts += ["--unit-size", str(cfg.unit_size)]
    if cfg.amp != "off":
        parts += ["--amp", cfg.amp]
    if cfg.device != "cpu":
        parts += ["--device", cfg.device]
    return shlex.join(parts)


def _prepare(cfg: BuildConfig, m: Manifest) -> tuple[PreparedBuild | None, str | None]:
    """(the prepared build, None), or (None, why it cannot run here: weights or data missing or changed)."""
    try:
        prep = prepare_build(cfg)
    except (OSError, ValueError, CacheError, RuntimeError) as e:
        return None, f"{type(e).__name__}: {e}" if not type(e).__module__.startswith("kdcache") else str(e)
    now = prep.manifest.replace(unit_size=m.unit_size, epochs_planned=m.epochs_planned)
    diffs = m.differences(now)
    if "kdcache_version" in diffs or "library_versions" in diffs:
        # A build resumes only with the software that started it (rendering may change between versions).
        return None, (
            f"the cache was built with kdcache {m.kdcache_version} and libraries {m.library_versions}; this is "
            f"kdcache {now.kdcache_version} with {now.library_versions}, and a build resumes only with the same "
            "versions: install those to repair it"
        )
    if diffs:
        return None, (
            f"the teacher or the data found now differ from those the cache was built with "
            f"(field(s) {', '.join(diffs)})"
        )
    return prep, None


def missing_units(reader: CacheReader) -> list[tuple[int, int]]:
    """Units of the epochs the manifest records as complete that are not committed now."""
    done = reader.completed_units()
    n = reader.num_units
    return [(e, u) for e in reader.manifest.epochs_complete for u in range(n) if (e, u) not in done]


def repair_cache(
    cache: str,
    *,
    data: str | None = None,
    teacher_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    workers: int = 2,
) -> RepairReport:
    """Read back every committed unit of ``cache`` (a finished cache: path or URL), remove the markers of the
    damaged ones and rewrite them, with any unit missing from a complete epoch; ``data`` and
    ``teacher_weights`` (the first teacher's) where they are now, if they moved. Stores are repaired in
    order, the cache's own first: layers replay its views."""
    layers = open_layers(cache)
    report = RepairReport(cache, [])
    builds: list[tuple[BuildConfig, PreparedBuild | None]] = []
    for i, (lid, reader) in enumerate(layers):
        units_read, damage = find_damage(reader)
        m = reader.manifest
        cfg = rebuild_config(
            m,
            cache,
            data=data,
            teacher_weights=teacher_weights if i == 0 else None,
            device=device,
            batch_size=batch_size,
            workers=workers,
        )
        store = StoreRepair(
            lid, teacher_label(m.teacher), units_read, damage, missing_units(reader), rebuild_command(m, cfg)
        )
        prep = None
        if store.needs_build:
            prep, store.missing_input = _prepare(cfg, m)
        report.stores.append(store)
        builds.append((cfg, prep))
    for (_, reader), store in zip(layers, report.stores, strict=True):
        if store.damage:
            with _locked(reader):  # no build may write the store while its markers go
                for d in store.damage:
                    reader.storage.delete(d.marker)
    if any(s.missing_input for s in report.stores):
        return report  # the commands finish the repair where the teacher and the data are
    for (_, reader), store, (cfg, prep) in zip(layers, report.stores, builds, strict=True):
        if not store.needs_build or prep is None:
            continue
        result = run_build(cfg, prep, cache)
        store.rewritten = result.stats.units if result is not None else 0
        after = open_cache(reader.storage)
        marker = functools.partial(_marker, reader.manifest)
        redo = [*store.damage, *(Damage(e, u, "", "missing", marker(e, u), "") for e, u in store.missing)]
        for d in redo:  # read the rewritten units back
            try:
                after.read_unit(d.epoch, d.unit)
            except CacheError as e:
                store.still_damaged.append(dataclasses.replace(d, reason=str(e)))
    return report


@contextlib.contextmanager
def _locked(reader: CacheReader):
    lock = build_lock(reader.storage).acquire()
    try:
        yield
    finally:
        lock.release()
