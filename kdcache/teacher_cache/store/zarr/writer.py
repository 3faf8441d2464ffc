"""Writing the zarr backend: zarr encodes each unit's rows into chunk files in memory; the storage
writes them, then the unit's marker."""

from __future__ import annotations

import json

import zarr
from zarr.storage import MemoryStore

from kdcache.storage import Storage
from kdcache.teacher_cache.store.base import CacheWriter
from kdcache.teacher_cache.store.errors import CacheError
from kdcache.teacher_cache.store.fields import UnitData
from kdcache.teacher_cache.store.labels import encode_unit, stored_layout
from kdcache.teacher_cache.store.layout import epoch_name
from kdcache.teacher_cache.store.manifest import Manifest
from kdcache.teacher_cache.store.units import unit_slots
from kdcache.teacher_cache.store.zarr.codecs import codec_kwargs
from kdcache.teacher_cache.store.zarr.layout import (
    _KEY_ENCODING,
    _ROOT_ATTRS,
    chunk_key,
    committed_units,
    field_ndims,
    marker_key,
)


def _root_doc() -> bytes:
    """The root group's zarr.json (identical for every writer)."""
    docs: dict = {}
    zarr.create_group(MemoryStore(docs), zarr_format=3, attributes=_ROOT_ATTRS)
    return docs["zarr.json"].to_bytes()


def _epoch_template(manifest: Manifest, epoch: int) -> tuple[dict, dict[str, zarr.Array]]:
    """An in-memory copy of epoch ``epoch``'s group: its metadata documents, and arrays that encode
    rows into chunk bytes exactly as zarr would store them."""
    m = manifest
    docs: dict = {}
    store = MemoryStore(docs)
    group = zarr.create_group(store, path=epoch_name(epoch), zarr_format=3, attributes={"kdcache_epoch": epoch})
    arrays = {}
    for name, (dtype, row) in stored_layout(m).items():
        group.create_array(
            name,
            shape=(m.num_slots, *row),
            chunks=(m.unit_size, *row),
            dtype=dtype,
            fill_value=0,
            chunk_key_encoding=_KEY_ENCODING,
            dimension_names=("slot", "k")[: 1 + len(row)],
            **codec_kwargs(name, 1 + len(row)),
        )
    # Units whose rows equal the fill value must still get their chunk (it is part of the commit).
    with zarr.config.set({"array.write_empty_chunks": True}):
        for name in stored_layout(m):
            arrays[name] = zarr.open_array(store, path=f"{epoch_name(epoch)}/{name}", mode="r+", zarr_format=3)
    return docs, arrays


class ZarrWriter(CacheWriter):
    def __init__(self, storage: Storage, manifest: Manifest):
        super().__init__(storage, manifest)
        self._templates: dict[int, tuple[dict, dict[str, zarr.Array]]] = {}
        self._ndim = field_ndims(manifest)

    def _prepare(self) -> None:
        if not self.storage.exists("zarr.json"):
            self.storage.write_new("zarr.json", _root_doc())

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return committed_units(self.storage, epoch)

    def _template(self, epoch: int) -> tuple[dict, dict[str, zarr.Array]]:
        if epoch not in self._templates:
            docs, arrays = _epoch_template(self.manifest, epoch)
            group_key = f"{epoch_name(epoch)}/zarr.json"
            if not self.storage.exists(group_key):
                # Arrays first, the group last: a group document means the epoch's metadata is whole.
                # Concurrent writers write identical documents; write_new keeps the first.
                # (zarr also puts an implicit root document in ``docs``; the root is _prepare's.)
                for key in sorted(k for k in docs if k.startswith(f"{epoch_name(epoch)}/") and k != group_key):
                    self.storage.write_new(key, docs[key].to_bytes())
                self.storage.write_new(group_key, docs[group_key].to_bytes())
            self._templates[epoch] = (docs, arrays)
        return self._templates[epoch]

    def _write(self, epoch: int, unit: int, data: UnitData) -> None:
        docs, arrays = self._template(epoch)
        a, b = unit_slots(self.manifest, unit)
        stored = encode_unit(self.manifest, data)
        for name, values in stored.items():
            arrays[name][a:b] = values
        for name in stored:
            key = chunk_key(epoch, name, unit, self._ndim[name])
            encoded = docs.pop(key, None)
            if encoded is None:
                raise CacheError(f"zarr did not encode {key}; the unit is not committed")
            self.storage.write(key, encoded.to_bytes())
        info = {"epoch": epoch, "unit": unit, "slots": [a, b]}
        self.storage.write(marker_key(epoch, unit), (json.dumps(info) + "\n").encode())
