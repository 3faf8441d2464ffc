"""Reading a cache: one interface over every backend. Only committed units are visible."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from kdcache.teacher_cache.errors import BuildNotFinishedError, IncompleteEpochError, NotACacheError
from kdcache.teacher_cache.fields import EpochBlock, UnitData
from kdcache.teacher_cache.layout import BUILD_HEADER, MANIFEST
from kdcache.teacher_cache.manifest import Manifest, read_manifest
from kdcache.teacher_cache.storage import Storage, open_storage
from kdcache.teacher_cache.units import num_units, unit_slots


class CacheReader(ABC):
    """Read access to a cache; get one from :func:`open_cache`."""

    def __init__(self, storage: Storage, manifest: Manifest, finished: bool):
        self.storage = storage
        self.root = storage.location  # a Path on local disk, a URL otherwise
        self.manifest = manifest
        self.finished = finished  # False: opened from the build header of a running/interrupted build
        self._check_layout()

    @property
    def num_units(self) -> int:
        return num_units(self.manifest)

    def completed_units(self) -> set[tuple[int, int]]:
        return {(e, u) for e in self._epochs_present() for u in self._completed_in_epoch(e)}

    @property
    def epochs_complete(self) -> list[int]:
        """Epochs whose every unit is committed, ascending."""
        n = self.num_units
        return [e for e in sorted(self._epochs_present()) if len(self._completed_in_epoch(e)) == n]

    def num_views(self) -> int:
        """Views in committed units."""
        return sum(b - a for _, u in self.completed_units() for a, b in [unit_slots(self.manifest, u)])

    def missing_units(self, epoch: int) -> list[int]:
        done = self._completed_in_epoch(epoch)
        return [u for u in range(self.num_units) if u not in done]

    def load_epoch(self, epoch: int) -> EpochBlock:
        """Every array of a complete epoch in memory, row s = slot s."""
        missing = self.missing_units(epoch)
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise IncompleteEpochError(
                f"epoch {epoch} of {self.root} is incomplete: {len(missing)} of {self.num_units} units missing "
                f"({shown}); run `kdcache build` again with the same arguments to finish it",
                epoch,
                missing,
            )
        return EpochBlock(**self._load_epoch(epoch).arrays(), epoch=epoch)

    def read_unit(self, epoch: int, unit: int) -> UnitData:
        """The rows of one committed unit."""
        unit_slots(self.manifest, unit)
        if unit not in self._completed_in_epoch(epoch):
            raise IncompleteEpochError(
                f"unit {unit} of epoch {epoch} is not committed in {self.root}", epoch, self.missing_units(epoch)
            )
        return self._read_unit(epoch, unit)

    def content_digest(self) -> str:
        from kdcache.teacher_cache.digest import content_digest

        return content_digest(self)

    def bytes_on_disk(self) -> int:
        return self.storage.total_size()

    @abstractmethod
    def _check_layout(self) -> None:
        """Fail early with a clear error if the directory does not look like this backend."""

    @abstractmethod
    def _epochs_present(self) -> set[int]:
        """Epochs with at least one committed unit (a superset is fine)."""

    @abstractmethod
    def _completed_in_epoch(self, epoch: int) -> set[int]: ...

    @abstractmethod
    def _load_epoch(self, epoch: int) -> UnitData: ...

    @abstractmethod
    def _read_unit(self, epoch: int, unit: int) -> UnitData: ...


def open_cache(path: str | Path | Storage, *, allow_unfinished: bool = False) -> CacheReader:
    """Open a cache (a directory or an fsspec URL) for reading; the backend is taken from its manifest.

    A cache whose build has not finished (no final manifest) raises BuildNotFinishedError unless
    ``allow_unfinished`` (then the build header is used and only committed units are visible).
    """
    from kdcache.teacher_cache.backends import reader_class

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
    return reader_class(manifest.backend)(storage, manifest, finished)
