"""Zarr v3 backend: one group per epoch, one array per field, one chunk per work unit.

A unit is exactly one chunk file of each array, so exactly one process writes each file (two writers
inside one zarr shard lose data). A unit is committed by its marker ``done/eEEEEE/uUUUUUU.json``,
written only after every chunk file of the unit is fsynced.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from kdcache.teacher_cache.atomic import fsync_path, publish_dir, write_atomic
from kdcache.teacher_cache.errors import CacheError, CorruptShardError, NotACacheError
from kdcache.teacher_cache.fields import FIELDS, UnitData, field_layout
from kdcache.teacher_cache.layout import epoch_name, parse_epoch, parse_unit, unit_name
from kdcache.teacher_cache.manifest import Manifest
from kdcache.teacher_cache.reader import CacheReader
from kdcache.teacher_cache.units import num_units, unit_slots
from kdcache.teacher_cache.writer import CacheWriter
from kdcache.teacher_cache.zarr_codecs import codec_kwargs
from kdcache.teacher_cache.zarr_fastread import Decoder, fast_decoder

DONE_DIR = "done"
_KEY_ENCODING = {"name": "default", "separator": "/"}  # chunk (u, 0) of a 2-D array is c/u/0


def chunk_path(root: Path, epoch: int, name: str, unit: int, ndim: int) -> Path:
    path = root / epoch_name(epoch) / name / "c" / str(unit)
    return path / "0" if ndim == 2 else path


def marker_path(root: Path, epoch: int, unit: int) -> Path:
    return root / DONE_DIR / epoch_name(epoch) / f"{unit_name(unit)}.json"


def _committed(root: Path, epoch: int) -> set[int]:
    try:
        names = os.listdir(root / DONE_DIR / epoch_name(epoch))
    except FileNotFoundError:
        return set()
    return {u for u in (parse_unit(n, "json") for n in names) if u is not None}


def _remedy(root: Path, epoch: int, unit: int) -> str:
    return (
        f"Delete {marker_path(root, epoch, unit)} and run `kdcache build` again with the same arguments "
        f"to rewrite unit {unit} of epoch {epoch}"
    )


def _ndims(manifest: Manifest) -> dict[str, int]:
    layout = field_layout(manifest.record_width, manifest.topk, manifest.num_classes)
    return {name: 1 + len(row) for name, (_, row) in layout.items()}


class ZarrWriter(CacheWriter):
    def __init__(self, root: Path, manifest: Manifest):
        super().__init__(root, manifest)
        self._arrays: dict[int, dict[str, zarr.Array]] = {}
        self._ndim = _ndims(manifest)

    def _prepare(self) -> None:
        if (self.root / "zarr.json").is_file():
            return
        tmp = self.root / f".tmp-root-{uuid.uuid4().hex}"
        zarr.create_group(LocalStore(tmp), zarr_format=3, attributes={"kdcache": {"manifest": "manifest.json"}})
        try:
            os.link(tmp / "zarr.json", self.root / "zarr.json")  # first process wins; contents are identical
        except FileExistsError:
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.root, epoch)

    def _epoch_arrays(self, epoch: int) -> dict[str, zarr.Array]:
        if epoch not in self._arrays:
            group_dir = self.root / epoch_name(epoch)
            if not (group_dir / "zarr.json").is_file():
                self._create_epoch_group(epoch, group_dir)
            store = LocalStore(self.root)
            # Units whose rows equal the fill value must still get their chunk file (it is what commits them).
            with zarr.config.set({"array.write_empty_chunks": True}):
                self._arrays[epoch] = {
                    n: zarr.open_array(store, path=f"{epoch_name(epoch)}/{n}", mode="r+", zarr_format=3) for n in FIELDS
                }
        return self._arrays[epoch]

    def _create_epoch_group(self, epoch: int, group_dir: Path) -> None:
        # Built aside, then renamed into place: concurrent writers never see a half-made group.
        m = self.manifest
        tmp = self.root / f".tmp-{epoch_name(epoch)}-{uuid.uuid4().hex}"
        group = zarr.create_group(LocalStore(tmp), zarr_format=3, attributes={"kdcache_epoch": epoch})
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
        publish_dir(tmp, group_dir)

    def _write(self, epoch: int, unit: int, data: UnitData) -> None:
        arrays = self._epoch_arrays(epoch)
        a, b = unit_slots(self.manifest, unit)
        for name, values in data.arrays().items():
            arrays[name][a:b] = values
        for name in FIELDS:
            path = chunk_path(self.root, epoch, name, unit, self._ndim[name])
            if not path.is_file():
                raise CacheError(f"zarr did not write {path}; the unit is not committed")
            fsync_path(path)
            fsync_path(path.parent)
        info = {"epoch": epoch, "unit": unit, "slots": [a, b]}
        write_atomic(marker_path(self.root, epoch, unit), (json.dumps(info) + "\n").encode())


class ZarrReader(CacheReader):
    def _check_layout(self) -> None:
        if not (self.root / "zarr.json").is_file():
            raise NotACacheError(f"{self.root}: the manifest says backend zarr but there is no zarr.json")
        self._ndim = _ndims(self.manifest)
        self._groups: dict[int, dict[str, zarr.Array]] = {}
        self.use_fast_path = True  # False: decode every chunk through zarr (tests compare both)

    def _epochs_present(self) -> set[int]:
        done = self.root / DONE_DIR
        if not done.is_dir():
            return set()
        return {e for e in (parse_epoch(n) for n in os.listdir(done)) if e is not None}

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.root, epoch)

    def _open_epoch(self, epoch: int) -> dict[str, zarr.Array]:
        if epoch in self._groups:
            return self._groups[epoch]
        m = self.manifest
        store = LocalStore(self.root, read_only=True)
        arrays = {}
        for name, (dtype, row) in field_layout(m.record_width, m.topk, m.num_classes).items():
            meta = self.root / epoch_name(epoch) / name / "zarr.json"
            try:
                arr = zarr.open_array(store, path=f"{epoch_name(epoch)}/{name}", mode="r", zarr_format=3)
            except Exception as e:  # zarr raises several types for missing or unparsable metadata
                raise CorruptShardError(meta, f"cannot open the array ({e})", _remedy(self.root, epoch, 0)) from e
            want = ((m.num_slots, *row), (m.unit_size, *row), dtype)
            if (arr.shape, arr.chunks, arr.dtype) != want:
                raise CorruptShardError(
                    meta,
                    f"array is {arr.dtype}{arr.shape} chunks {arr.chunks}, the manifest implies {want}",
                    "The cache directory mixes incompatible files; rebuild it",
                )
            arrays[name] = arr
        self._groups[epoch] = arrays
        return arrays

    def _read(self, epoch: int, units: list[int]) -> UnitData:
        """Rows of consecutive committed units ``units``."""
        arrays = self._open_epoch(epoch)
        a, b = unit_slots(self.manifest, units[0])[0], unit_slots(self.manifest, units[-1])[1]
        out = {}
        for name in FIELDS:
            decoder = self._decoder(epoch, name)
            if decoder is not None:
                out[name] = self._read_direct(epoch, name, units, decoder, arrays[name])
                continue
            for u in units:  # zarr returns the fill value for a missing chunk: that must not pass as data
                path = chunk_path(self.root, epoch, name, u, self._ndim[name])
                if not path.is_file():
                    reason = "chunk file missing for a committed unit"
                    raise CorruptShardError(path, reason, _remedy(self.root, epoch, u))
            try:
                out[name] = np.asarray(arrays[name][a:b])
            except Exception as e:  # codec errors come in many types; find and name the bad chunk file
                self._locate(epoch, name, units, e)
                raise
        return UnitData(**out)

    def _decoder(self, epoch: int, name: str) -> Decoder | None:
        if not self.use_fast_path:
            return None
        meta = self.root / epoch_name(epoch) / name / "zarr.json"
        return fast_decoder(json.loads(meta.read_bytes()))

    def _read_direct(self, epoch: int, name: str, units: list[int], decode: Decoder, arr: zarr.Array) -> np.ndarray:
        """Decode the units' chunk files straight into one array (see zarr_fastread for why)."""
        a, b = unit_slots(self.manifest, units[0])[0], unit_slots(self.manifest, units[-1])[1]
        out = np.empty((b - a, *arr.shape[1:]), dtype=arr.dtype)
        # Plain strings, not pathlib, in this loop: ~750 chunks per epoch and pathlib costs ~0.1 s.
        field_dir = os.path.join(self.root, epoch_name(epoch), name, "c")
        suffix = "/0" if self._ndim[name] == 2 else ""
        for u in units:
            ua, ub = unit_slots(self.manifest, u)
            path = f"{field_dir}/{u}{suffix}"
            try:
                with open(path, "rb") as f:
                    out[ua - a : ub - a] = decode(f.read())[: ub - ua]
            except FileNotFoundError:
                reason = "chunk file missing for a committed unit"
                raise CorruptShardError(path, reason, _remedy(self.root, epoch, u)) from None
            except (ValueError, OSError) as e:
                raise CorruptShardError(path, str(e), _remedy(self.root, epoch, u)) from None
        return out

    def _locate(self, epoch: int, name: str, units: list[int], exc: Exception) -> None:
        arr = self._open_epoch(epoch)[name]
        for u in units:
            a, b = unit_slots(self.manifest, u)
            try:
                arr[a:b]
            except Exception as e:
                path = chunk_path(self.root, epoch, name, u, self._ndim[name])
                reason = f"cannot decode ({type(e).__name__}: {e})"
                raise CorruptShardError(path, reason, _remedy(self.root, epoch, u)) from e
        raise CacheError(f"reading {name} of epoch {epoch} from {self.root} failed: {exc}") from exc

    def _load_epoch(self, epoch: int) -> UnitData:
        return self._read(epoch, list(range(num_units(self.manifest))))

    def _read_unit(self, epoch: int, unit: int) -> UnitData:
        return self._read(epoch, [unit])
