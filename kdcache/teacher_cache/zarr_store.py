"""Zarr v3 backend: one group per epoch, one array per field, one chunk per work unit.

A unit is exactly one chunk file of each array, so exactly one process writes each file (two writers
inside one zarr shard lose data). A unit is committed by its marker ``done/eEEEEE/uUUUUUU.json``,
written only after every chunk file of the unit is durable.

zarr encodes and decodes; the bytes move through :mod:`storage` (local disk or an object store), because
the commit rules (atomic objects, a marker written last) are kdcache's, not zarr's. The layout on disk
is plain zarr: ``zarr.open_group(path)`` reads any epoch without kdcache.
"""

from __future__ import annotations

import json

import numpy as np
import zarr
from zarr.storage import MemoryStore

from kdcache.teacher_cache.errors import CacheError, CorruptShardError, NotACacheError
from kdcache.teacher_cache.fields import FIELDS, UnitData, field_layout
from kdcache.teacher_cache.layout import epoch_name, parse_epoch, parse_unit, unit_name
from kdcache.teacher_cache.manifest import Manifest
from kdcache.teacher_cache.reader import CacheReader
from kdcache.teacher_cache.storage import Storage
from kdcache.teacher_cache.units import num_units, unit_slots
from kdcache.teacher_cache.writer import CacheWriter
from kdcache.teacher_cache.zarr_codecs import codec_kwargs
from kdcache.teacher_cache.zarr_fastread import fast_decoder

DONE_DIR = "done"
_KEY_ENCODING = {"name": "default", "separator": "/"}  # chunk (u, 0) of a 2-D array is c/u/0
_ROOT_ATTRS = {"kdcache": {"manifest": "manifest.json"}}


def chunk_key(epoch: int, name: str, unit: int, ndim: int) -> str:
    key = f"{epoch_name(epoch)}/{name}/c/{unit}"
    return f"{key}/0" if ndim == 2 else key


def marker_key(epoch: int, unit: int) -> str:
    return f"{DONE_DIR}/{epoch_name(epoch)}/{unit_name(unit)}.json"


def _committed(storage: Storage, epoch: int) -> set[int]:
    names = storage.listdir(f"{DONE_DIR}/{epoch_name(epoch)}")
    return {u for u in (parse_unit(n, "json") for n in names) if u is not None}


def _remedy(storage: Storage, epoch: int, unit: int) -> str:
    return (
        f"Delete {storage.where(marker_key(epoch, unit))} and run `kdcache build` again with the same arguments "
        f"to rewrite unit {unit} of epoch {epoch}"
    )


def _ndims(manifest: Manifest) -> dict[str, int]:
    layout = field_layout(manifest.record_width, manifest.topk, manifest.num_classes)
    return {name: 1 + len(row) for name, (_, row) in layout.items()}


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
    for name, (dtype, row) in field_layout(m.record_width, m.topk, m.num_classes).items():
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
        for name in FIELDS:
            arrays[name] = zarr.open_array(store, path=f"{epoch_name(epoch)}/{name}", mode="r+", zarr_format=3)
    return docs, arrays


class ZarrWriter(CacheWriter):
    def __init__(self, storage: Storage, manifest: Manifest):
        super().__init__(storage, manifest)
        self._templates: dict[int, tuple[dict, dict[str, zarr.Array]]] = {}
        self._ndim = _ndims(manifest)

    def _prepare(self) -> None:
        if not self.storage.exists("zarr.json"):
            self.storage.write_new("zarr.json", _root_doc())

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.storage, epoch)

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
        for name, values in data.arrays().items():
            arrays[name][a:b] = values
        for name in FIELDS:
            key = chunk_key(epoch, name, unit, self._ndim[name])
            encoded = docs.pop(key, None)
            if encoded is None:
                raise CacheError(f"zarr did not encode {key}; the unit is not committed")
            self.storage.write(key, encoded.to_bytes())
        info = {"epoch": epoch, "unit": unit, "slots": [a, b]}
        self.storage.write(marker_key(epoch, unit), (json.dumps(info) + "\n").encode())


class ZarrReader(CacheReader):
    def _check_layout(self) -> None:
        if not self.storage.exists("zarr.json"):
            raise NotACacheError(f"{self.root}: the manifest says backend zarr but there is no zarr.json")
        self._ndim = _ndims(self.manifest)
        m = self.manifest
        self._dtypes = {n: np.dtype(d) for n, (d, _) in field_layout(m.record_width, m.topk, m.num_classes).items()}
        self._meta: dict[tuple[int, str], dict] = {}
        self.use_fast_path = True  # False: decode every chunk through zarr (tests compare both)

    def _epochs_present(self) -> set[int]:
        return {e for e in (parse_epoch(n) for n in self.storage.listdir(DONE_DIR)) if e is not None}

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.storage, epoch)

    def _array_meta(self, epoch: int, name: str) -> dict:
        """The field's zarr.json, checked against the manifest."""
        if (epoch, name) in self._meta:
            return self._meta[(epoch, name)]
        m = self.manifest
        dtype, row = field_layout(m.record_width, m.topk, m.num_classes)[name]
        key = f"{epoch_name(epoch)}/{name}/zarr.json"
        try:
            meta = json.loads(self.storage.read(key))
            arr = self._zarr_array(meta, {})
        except Exception as e:  # missing, unparsable or invalid metadata
            raise CorruptShardError(
                self.storage.where(key), f"cannot open the array ({e})", _remedy(self.storage, epoch, 0)
            ) from e
        want = ((m.num_slots, *row), (m.unit_size, *row), dtype)
        if (arr.shape, arr.chunks, arr.dtype) != want:
            raise CorruptShardError(
                self.storage.where(key),
                f"array is {arr.dtype}{arr.shape} chunks {arr.chunks}, the manifest implies {want}",
                "The cache directory mixes incompatible files; rebuild it",
            )
        self._meta[(epoch, name)] = meta
        return meta

    @staticmethod
    def _zarr_array(meta: dict, chunks: dict[str, bytes]) -> zarr.Array:
        """A read-only zarr array over ``meta`` and the given chunk bytes (keys relative to the array)."""
        from zarr.core.buffer import cpu

        docs = {"zarr.json": cpu.Buffer.from_bytes(json.dumps(meta).encode())}
        docs.update({k: cpu.Buffer.from_bytes(v) for k, v in chunks.items()})
        return zarr.open_array(MemoryStore(docs, read_only=True), mode="r", zarr_format=3)

    def _read(self, epoch: int, units: list[int]) -> UnitData:
        """Rows of consecutive committed units ``units``."""
        a, b = unit_slots(self.manifest, units[0])[0], unit_slots(self.manifest, units[-1])[1]
        out = {}
        for name in FIELDS:
            meta = self._array_meta(epoch, name)
            dtype = self._dtypes[name]
            keys = [chunk_key(epoch, name, u, self._ndim[name]) for u in units]
            try:
                raws = self.storage.read_many(keys)
            except FileNotFoundError as e:
                key = getattr(e, "key", None)
                unit = units[keys.index(key)] if key in keys else units[0]
                raise CorruptShardError(
                    e.filename, "chunk file missing for a committed unit", _remedy(self.storage, epoch, unit)
                ) from None
            decode = fast_decoder(meta) if self.use_fast_path else None
            rows = None
            for u, key, raw in zip(units, keys, raws, strict=True):
                ua, ub = unit_slots(self.manifest, u)
                try:
                    values = decode(raw)[: ub - ua] if decode is not None else self._zarr_decode(meta, key, raw, u)
                except Exception as e:  # codec errors come in many types; name the bad chunk file
                    reason = str(e) if decode is not None else f"cannot decode ({type(e).__name__}: {e})"
                    raise CorruptShardError(self.storage.where(key), reason, _remedy(self.storage, epoch, u)) from None
                if rows is None:
                    rows = np.empty((b - a, *values.shape[1:]), dtype=dtype)
                rows[ua - a : ub - a] = values
            out[name] = rows
        return UnitData(**out)

    def _zarr_decode(self, meta: dict, key: str, raw: bytes, unit: int) -> np.ndarray:
        rel = key.split("/", 2)[2]  # "c/<unit>[/0]" relative to the array
        a, b = unit_slots(self.manifest, unit)
        return np.asarray(self._zarr_array(meta, {rel: raw})[a:b])

    def _load_epoch(self, epoch: int) -> UnitData:
        return self._read(epoch, list(range(num_units(self.manifest))))

    def _read_unit(self, epoch: int, unit: int) -> UnitData:
        return self._read(epoch, [unit])
