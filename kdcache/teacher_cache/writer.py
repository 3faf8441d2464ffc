"""Writing a cache: units committed atomically, in any order, by any number of processes.

Only the build header (created once, first writer wins) and the final manifest (written last, by one
process) are shared files; every unit lives in files of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from kdcache.teacher_cache.atomic import is_temp
from kdcache.teacher_cache.errors import CacheError, ManifestMismatchError, NotACacheError
from kdcache.teacher_cache.fields import UnitData
from kdcache.teacher_cache.layout import BUILD_HEADER, MANIFEST
from kdcache.teacher_cache.manifest import Manifest, read_manifest
from kdcache.teacher_cache.storage import Storage, open_storage
from kdcache.teacher_cache.units import check_unit_data, check_unit_id, num_units

# Files another part of kdcache may create before the store exists (the build's flock file).
_TOLERATED = frozenset({"build.lock"})


class CacheWriter(ABC):
    """Writes units of one cache. Get one from :func:`create_or_open_writer`."""

    def __init__(self, storage: Storage, manifest: Manifest):
        self.storage = storage
        self.root = storage.location  # a Path on local disk, a URL otherwise
        self.manifest = manifest  # the stored header, epochs_planned raised to what this run plans

    def completed_units(self) -> set[tuple[int, int]]:
        """(epoch, unit) of every committed unit, whoever wrote it."""
        return {(e, u) for e in range(self.manifest.epochs_planned) for u in self._completed_in_epoch(e)}

    def write_unit(self, epoch: int, unit: int, data: UnitData) -> None:
        """Write all rows of one unit, then commit it; readers see all of it or none of it."""
        check_unit_id(self.manifest, epoch, unit)
        epoch, unit = int(epoch), int(unit)
        if epoch >= self.manifest.epochs_planned:
            raise ValueError(f"epoch {epoch} is beyond the {self.manifest.epochs_planned} planned epochs")
        check_unit_data(self.manifest, unit, data)
        if unit in self._completed_in_epoch(epoch):
            raise CacheError(
                f"unit {unit} of epoch {epoch} is already committed in {self.root}; skip units listed by "
                f"completed_units() (only one process may write a unit)"
            )
        self._write(epoch, unit, data)

    def write_unit_arrays(self, epoch: int, unit: int, arrays: dict[str, np.ndarray]) -> None:
        """:meth:`write_unit` with the fields as a dict (name -> array)."""
        self.write_unit(epoch, unit, UnitData.from_arrays(arrays))

    def finalize(self) -> Manifest:
        """Write the final manifest (last step of a build) and return it."""
        stored = read_manifest(self.storage, BUILD_HEADER) or self.manifest
        planned = max(stored.epochs_planned, self.manifest.epochs_planned)
        n = num_units(self.manifest)
        complete = tuple(e for e in range(planned) if len(self._completed_in_epoch(e)) == n)
        final = self.manifest.replace(epochs_planned=planned, epochs_complete=complete)
        self.storage.write(MANIFEST, final.to_json().encode())
        return final

    @abstractmethod
    def _prepare(self) -> None:
        """Create the backend's shared, immutable skeleton (idempotent, safe to race)."""

    @abstractmethod
    def _completed_in_epoch(self, epoch: int) -> set[int]: ...

    @abstractmethod
    def _write(self, epoch: int, unit: int, data: UnitData) -> None: ...


def create_or_open_writer(path: str | Path | Storage, manifest: Manifest, backend: str | None = None) -> CacheWriter:
    """Start a cache at ``path`` (a directory or an fsspec URL such as s3://bucket/prefix), or reopen it
    to resume or extend.

    ``backend`` (zarr | wds) overrides ``manifest.backend``. Reopening requires the stored header to
    equal ``manifest`` except for epochs_planned (may grow), created and epochs_complete; otherwise
    ManifestMismatchError lists the differing fields. Safe to call from several processes at once.
    """
    from kdcache.teacher_cache.backends import writer_class  # the backends import this module

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
    writer = writer_class(stored.backend)(storage, stored.replace(epochs_complete=()))
    writer._prepare()
    return writer
