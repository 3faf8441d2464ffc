"""Where the zarr backend puts things: chunk and marker keys, committed units, repair advice."""

from __future__ import annotations

from kdcache.storage import Storage
from kdcache.teacher_cache.store.labels import stored_layout
from kdcache.teacher_cache.store.layout import epoch_name, parse_unit, unit_name
from kdcache.teacher_cache.store.manifest import Manifest

DONE_DIR = "done"
_KEY_ENCODING = {"name": "default", "separator": "/"}  # chunk (u, 0) of a 2-D array is c/u/0
_ROOT_ATTRS = {"kdcache": {"manifest": "manifest.json"}}


def chunk_key(epoch: int, name: str, unit: int, ndim: int) -> str:
    key = f"{epoch_name(epoch)}/{name}/c/{unit}"
    return f"{key}/0" if ndim == 2 else key


def marker_key(epoch: int, unit: int) -> str:
    return f"{DONE_DIR}/{epoch_name(epoch)}/{unit_name(unit)}.json"


def committed_units(storage: Storage, epoch: int) -> set[int]:
    names = storage.listdir(f"{DONE_DIR}/{epoch_name(epoch)}")
    return {u for u in (parse_unit(n, "json") for n in names) if u is not None}


def remedy(storage: Storage, epoch: int, unit: int) -> str:
    return (
        f"Delete {storage.where(marker_key(epoch, unit))} and run `kdcache build` again with the same arguments "
        f"to rewrite unit {unit} of epoch {epoch}"
    )


def field_ndims(manifest: Manifest) -> dict[str, int]:
    layout = stored_layout(manifest)
    return {name: 1 + len(row) for name, (_, row) in layout.items()}
