"""Reading the wds backend: whole shards through the storage."""

from __future__ import annotations

from collections.abc import Iterable

from kdcache.teacher_cache.store.base import CacheReader
from kdcache.teacher_cache.store.errors import CorruptShardError
from kdcache.teacher_cache.store.fields import UnitData
from kdcache.teacher_cache.store.layout import parse_epoch
from kdcache.teacher_cache.store.units import num_units, unit_slots
from kdcache.teacher_cache.store.wds.layout import committed_units, remedy, shard_key
from kdcache.teacher_cache.store.wds.tar import ShardFormatError, decode_members, read_shard


class WdsReader(CacheReader):
    def _check_layout(self) -> None:
        pass  # an empty build has no shard yet; nothing else to check

    def _epochs_present(self) -> set[int]:
        return {e for e in (parse_epoch(n) for n in self.storage.listdir()) if e is not None}

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return committed_units(self.storage, epoch)

    def _decode(self, epoch: int, unit: int, raw: bytes) -> UnitData:
        a, b = unit_slots(self.manifest, unit)
        where = self.storage.where(shard_key(epoch, unit))
        try:
            _meta, data = decode_members(read_shard(raw), epoch, unit)
            if data.num_views != b - a:
                raise ShardFormatError(f"holds {data.num_views} views, unit {unit} has {b - a}")
        except ShardFormatError as e:
            raise CorruptShardError(where, str(e), remedy(where)) from None
        return data

    def _read_units(self, epoch: int, units: list[int]) -> list[UnitData]:
        try:
            raws = self.storage.read_many([shard_key(epoch, u) for u in units])
        except FileNotFoundError as e:
            raise CorruptShardError(e.filename, "shard vanished while reading", remedy(e.filename)) from None
        return [self._decode(epoch, u, raw) for u, raw in zip(units, raws, strict=True)]

    def _read_unit(self, epoch: int, unit: int) -> UnitData:
        return self._read_units(epoch, [unit])[0]

    def _load_epoch(self, epoch: int) -> UnitData:
        return UnitData.concat(self._read_units(epoch, list(range(num_units(self.manifest)))))

    def shard_urls(self, epochs: Iterable[int] | None = None) -> list[str]:
        """Paths (or URLs) of committed shards in (epoch, unit) order, for webdataset or any tar reader."""
        chosen = sorted(self._epochs_present()) if epochs is None else list(epochs)
        return [self.storage.where(shard_key(e, u)) for e in chosen for u in sorted(self._completed_in_epoch(e))]
