"""Reading the zarr backend: chunk files are fetched through the storage and decoded directly
(:mod:`fastread`) or, for chains kdcache does not write, by zarr."""

from __future__ import annotations

import json

import numpy as np
import zarr
from zarr.storage import MemoryStore

from kdcache.teacher_cache.store.base import CacheReader
from kdcache.teacher_cache.store.errors import CorruptShardError, NotACacheError
from kdcache.teacher_cache.store.fields import UnitData
from kdcache.teacher_cache.store.labels import decode_unit, stored_layout
from kdcache.teacher_cache.store.layout import epoch_name, parse_epoch
from kdcache.teacher_cache.store.units import num_units, unit_slots
from kdcache.teacher_cache.store.zarr.fastread import fast_decoder
from kdcache.teacher_cache.store.zarr.layout import DONE_DIR, chunk_key, committed_units, field_ndims, remedy


class ZarrReader(CacheReader):
    def _check_layout(self) -> None:
        if not self.storage.exists("zarr.json"):
            raise NotACacheError(f"{self.root}: the manifest says backend zarr but there is no zarr.json")
        self._ndim = field_ndims(self.manifest)
        m = self.manifest
        self._dtypes = {n: np.dtype(d) for n, (d, _) in stored_layout(m).items()}
        self._meta: dict[tuple[int, str], dict] = {}
        self.use_fast_path = True  # False: decode every chunk through zarr (tests compare both)

    def _epochs_present(self) -> set[int]:
        return {e for e in (parse_epoch(n) for n in self.storage.listdir(DONE_DIR)) if e is not None}

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return committed_units(self.storage, epoch)

    def _array_meta(self, epoch: int, name: str) -> dict:
        """The field's zarr.json, checked against the manifest."""
        if (epoch, name) in self._meta:
            return self._meta[(epoch, name)]
        m = self.manifest
        dtype, row = stored_layout(m)[name]
        key = f"{epoch_name(epoch)}/{name}/zarr.json"
        try:
            meta = json.loads(self.storage.read(key))
            arr = self._zarr_array(meta, {})
        except Exception as e:  # missing, unparsable or invalid metadata
            raise CorruptShardError(
                self.storage.where(key), f"cannot open the array ({e})", remedy(self.storage, epoch, 0)
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
        for name in self._dtypes:
            meta = self._array_meta(epoch, name)
            dtype = self._dtypes[name]
            keys = [chunk_key(epoch, name, u, self._ndim[name]) for u in units]
            try:
                raws = self.storage.read_many(keys)
            except FileNotFoundError as e:
                key = getattr(e, "key", None)
                unit = units[keys.index(key)] if key in keys else units[0]
                raise CorruptShardError(
                    e.filename, "chunk file missing for a committed unit", remedy(self.storage, epoch, unit)
                ) from None
            decode = fast_decoder(meta) if self.use_fast_path else None
            rows = None
            for u, key, raw in zip(units, keys, raws, strict=True):
                ua, ub = unit_slots(self.manifest, u)
                try:
                    values = decode(raw)[: ub - ua] if decode is not None else self._zarr_decode(meta, key, raw, u)
                except Exception as e:  # codec errors come in many types; name the bad chunk file
                    reason = str(e) if decode is not None else f"cannot decode ({type(e).__name__}: {e})"
                    raise CorruptShardError(self.storage.where(key), reason, remedy(self.storage, epoch, u)) from None
                if rows is None:
                    rows = np.empty((b - a, *values.shape[1:]), dtype=dtype)
                rows[ua - a : ub - a] = values
            out[name] = rows
        return decode_unit(out)

    def _zarr_decode(self, meta: dict, key: str, raw: bytes, unit: int) -> np.ndarray:
        rel = key.split("/", 2)[2]  # "c/<unit>[/0]" relative to the array
        a, b = unit_slots(self.manifest, unit)
        return np.asarray(self._zarr_array(meta, {rel: raw})[a:b])

    def _load_epoch(self, epoch: int) -> UnitData:
        return self._read(epoch, list(range(num_units(self.manifest))))

    def _read_unit(self, epoch: int, unit: int) -> UnitData:
        return self._read(epoch, [unit])
