"""The abstract reader and writer every backend implements. Imports no implementation.

Readers see only committed units. Writers commit units atomically, in any order, from any number of
processes: only the build header (created once, first writer wins) and the final manifest (written
last, by one process) are shared files; every unit lives in files of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from kdcache.storage import Storage
from kdcache.teacher_cache.store.errors import CacheError, IncompleteEpochError
from kdcache.teacher_cache.store.fields import EpochBlock, UnitData
from kdcache.teacher_cache.store.layout import BUILD_HEADER, MANIFEST
from kdcache.teacher_cache.store.manifest import Manifest, read_manifest
from kdcache.teacher_cache.store.units import check_unit_data, check_unit_id, num_units, unit_slots


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

    def prepare(self) -> None:
        """Create the backend's shared skeleton before the first unit is written (idempotent, safe to race);
        :func:`~kdcache.teacher_cache.store.open.create_or_open_writer` calls it."""
        self._prepare()

    @abstractmethod
    def _prepare(self) -> None:
        """Create the backend's shared, immutable skeleton (idempotent, safe to race)."""

    @abstractmethod
    def _completed_in_epoch(self, epoch: int) -> set[int]: ...

    @abstractmethod
    def _write(self, epoch: int, unit: int, data: UnitData) -> None: ...
