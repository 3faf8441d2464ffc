"""Opening a cache: for reading (one layer or all), for writing (start, resume or extend), streaming.

The backend table here is the only place that knows every backend; the backends implement
:mod:`kdcache.teacher_cache.store.base`, which knows none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdcache.storage import Storage, is_temp, open_storage
from kdcache.storage.locking import LOCK_NAME
from kdcache.teacher_cache.store.base import CacheReader, CacheWriter
from kdcache.teacher_cache.store.errors import (
    BuildNotFinishedError,
    CacheError,
    ManifestError,
    ManifestMismatchError,
    NotACacheError,
    UnsupportedFormatError,
)
from kdcache.teacher_cache.store.layers import layer_id, layer_ids, layer_storage, teacher_label
from kdcache.teacher_cache.store.layout import BUILD_HEADER, MANIFEST
from kdcache.teacher_cache.store.manifest import (
    Manifest,
    current_library_versions,
    format_version_for,
    read_manifest,
    utc_now_iso,
)
from kdcache.teacher_cache.store.wds import WdsReader, WdsWriter, wds_pipeline
from kdcache.teacher_cache.store.zarr import ZarrReader, ZarrWriter
from kdcache.version import __version__

_log = logging.getLogger("kdcache")


# manifest.backend -> (reader class, writer class)
BACKENDS: dict[str, tuple[type[CacheReader], type[CacheWriter]]] = {
    "zarr": (ZarrReader, ZarrWriter),
    "wds": (WdsReader, WdsWriter),
}
# Files another part of kdcache may create before the store exists (the build's flock file).
_TOLERATED = frozenset({LOCK_NAME})


def _backend(name: str) -> tuple[type[CacheReader], type[CacheWriter]]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ManifestError(f"unknown cache backend {name!r}; expected {' or '.join(BACKENDS)}") from None


def open_cache(path: str | Path | Storage, *, allow_unfinished: bool = False) -> CacheReader:
    """Open a cache (a directory or an fsspec URL) for reading; the backend is taken from its manifest.

    A cache whose build has not finished (no final manifest) raises BuildNotFinishedError unless
    ``allow_unfinished`` (then the build header is used and only committed units are visible).
    """
    storage = open_storage(path)
    root = storage.location
    if storage.is_local and not Path(root).is_dir():
        raise NotACacheError(f"no cache at {root}: not a directory. Build one with `kdcache build ... --out {root}`")
    manifest = read_manifest(storage, MANIFEST)
    finished = manifest is not None
    if manifest is None:
        manifest = read_manifest(storage, BUILD_HEADER)
    if manifest is None:
        raise NotACacheError(
            f"{root} is not a kdcache cache (no {MANIFEST} or {BUILD_HEADER}); build one with "
            f"`kdcache build ... --out {root}`"
        )
    if not finished and not allow_unfinished:
        raise BuildNotFinishedError(
            f"the build of {root} has not finished (no {MANIFEST} yet): if it is not running, run the same "
            f"`kdcache build ... --out {root}` command again to resume it"
        )
    return _backend(manifest.backend)[0](storage, manifest, finished)


def open_layers(path: str | Path | Storage, *, allow_unfinished: bool = False) -> list[tuple[str | None, CacheReader]]:
    """Every layer of a cache as (layer id, reader): (None, the cache's own store) first, then each
    teacher layer under ``layers/`` by id (a layer whose build has not finished is opened unfinished;
    a folder with no build header yet is skipped). A cache without layers has one."""
    first = open_cache(path, allow_unfinished=allow_unfinished)
    out: list[tuple[str | None, CacheReader]] = [(None, first)]
    for lid in layer_ids(first.storage):
        try:
            out.append((lid, open_cache(layer_storage(first.storage, lid), allow_unfinished=True)))
        except NotACacheError:
            continue
        except UnsupportedFormatError as e:  # a newer kdcache's layer: the other teachers stay readable
            _log.warning("layer %s skipped: %s", lid, e)
    return out


def open_layer(path: str | Path | Storage, teacher: str | None, *, allow_unfinished: bool = False) -> CacheReader:
    """The layer of ``teacher`` (its name as typed at build time, its timm model or its layer id);
    None: the cache's own (first) layer."""
    layers = open_layers(path, allow_unfinished=allow_unfinished)
    if teacher is None:
        return layers[0][1]
    ids = [lid or layer_id(r.manifest.teacher) for lid, r in layers]  # the first layer answers to its id too
    found = [r for lid, (_, r) in zip(ids, layers, strict=True) if teacher == lid]
    found = found or [
        r for _, r in layers if teacher in (teacher_label(r.manifest.teacher), r.manifest.teacher.get("model"))
    ]
    if len(found) == 1:
        return found[0]
    names = ", ".join(teacher_label(r.manifest.teacher) for _, r in layers)
    if found:
        raise CacheError(
            f"--teacher {teacher!r} matches {len(found)} layers of {path}; name one by its layer id: {', '.join(ids)}"
        )
    raise CacheError(f"{path} has no layer of teacher {teacher!r}; its teachers: {names} (`kdcache info {path}`)")


def create_or_open_writer(path: str | Path | Storage, manifest: Manifest, backend: str | None = None) -> CacheWriter:
    """Start a cache at ``path`` (a directory or an fsspec URL such as s3://bucket/prefix), or reopen it
    to resume or extend.

    ``backend`` (zarr | wds) overrides ``manifest.backend``. Reopening requires the stored header to
    equal ``manifest`` except for epochs_planned (may grow), created and epochs_complete; otherwise
    ManifestMismatchError lists the differing fields. Safe to call from several processes at once.
    """
    if backend is not None and backend != manifest.backend:
        manifest = manifest.replace(backend=backend)
    storage = open_storage(path)
    root = storage.location
    if storage.is_folder_like_file():
        raise NotACacheError(f"{root} is a file; give a directory for the cache")
    header = storage.where(BUILD_HEADER)
    stored = read_manifest(storage, BUILD_HEADER) or read_manifest(storage, MANIFEST)
    if stored is None:
        others = sorted(n for n in storage.listdir() if not is_temp(n) and n not in _TOLERATED)
        if BUILD_HEADER in others or MANIFEST in others:
            # Another process created the header between our read and our listing: compare with theirs.
            stored = read_manifest(storage, BUILD_HEADER) or read_manifest(storage, MANIFEST)
    if stored is None:
        if others:
            raise NotACacheError(
                f"{root} is not empty ({', '.join(others[:5])}) and holds no kdcache build; "
                f"choose a new or empty directory for the cache"
            )
        fresh = manifest.replace(epochs_complete=())
        if not storage.write_new(BUILD_HEADER, fresh.to_json().encode()):
            stored = read_manifest(storage, BUILD_HEADER)  # another process created it first: compare with theirs
        else:
            stored = fresh
    if stored is None:
        raise CacheError(f"{header} vanished while opening the cache; is another process deleting {root}?")
    diffs = stored.differences(manifest)
    if diffs:
        raise ManifestMismatchError(
            f"{root} holds a cache built with different settings; differing field(s): {', '.join(diffs)}. "
            f"Resume with the original settings, or build into a new directory",
            diffs,
        )
    if manifest.epochs_planned > stored.epochs_planned:
        stored = stored.replace(epochs_planned=manifest.epochs_planned)
        storage.write(BUILD_HEADER, stored.replace(epochs_complete=()).to_json().encode())
    writer = _backend(stored.backend)[1](storage, stored.replace(epochs_complete=()))
    writer.prepare()
    return writer


def make_manifest(
    *,
    backend: str,
    teacher: dict[str, Any],
    recipe: dict[str, Any],
    seed: int,
    topk: int,
    class_names: list[str],
    dataset: dict[str, Any],
    epochs_planned: int,
    num_slots: int,
    unit_size: int,
    record_width: int,
    repeats: int | None = None,
    image_size: int | None = None,
    tail_classes: int = 0,
    draws: int = 0,
) -> Manifest:
    """A build's manifest: repeats and image size default to the recipe's, num_classes is the teacher's,
    and version, creation time and library versions are filled in from this process."""
    augment = recipe.get("augment", {})
    return Manifest(
        format_version=format_version_for(tail_classes, draws),
        tail_classes=tail_classes,
        draws=draws,
        kdcache_version=__version__,
        backend=backend,
        teacher=teacher,
        recipe=recipe,
        seed=seed,
        repeats=augment.get("repeats") if repeats is None else repeats,
        image_size=augment.get("image_size") if image_size is None else image_size,
        topk=topk,
        num_classes=teacher.get("num_classes"),
        class_names=tuple(class_names),
        dataset=dataset,
        epochs_planned=epochs_planned,
        num_slots=num_slots,
        unit_size=unit_size,
        record_width=record_width,
        created=utc_now_iso(),
        library_versions=current_library_versions(),
    )


def stream_views(
    path: str | Path,
    epochs: Iterable[int] | None = None,
    *,
    nodesplitter: Any = None,
    workersplitter: Any = None,
) -> Any:
    """A webdataset pipeline over the committed shards of a wds cache, yielding one dict per view
    (epoch, slot and every field). See :func:`kdcache.teacher_cache.store.wds.wds_pipeline`."""
    reader = open_cache(path)
    if not isinstance(reader, WdsReader):
        raise CacheError(
            f"{path} is a {reader.manifest.backend} cache; stream_views needs a wds one: "
            f"kdcache export {path} --format wds --out DIR"
        )
    return wds_pipeline(reader, epochs, nodesplitter=nodesplitter, workersplitter=workersplitter)
