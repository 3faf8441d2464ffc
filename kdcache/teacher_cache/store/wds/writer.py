"""Writing the wds backend: one deterministic tar shard per unit, created, never replaced."""

from __future__ import annotations

from kdcache.teacher_cache.store.base import CacheWriter
from kdcache.teacher_cache.store.errors import CacheError
from kdcache.teacher_cache.store.fields import UnitData
from kdcache.teacher_cache.store.labels import encode_unit
from kdcache.teacher_cache.store.units import unit_slots
from kdcache.teacher_cache.store.wds.layout import committed_units, shard_key
from kdcache.teacher_cache.store.wds.tar import build_shard


class WdsWriter(CacheWriter):
    def _prepare(self) -> None:
        pass  # nothing shared: epoch folders are made on demand

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return committed_units(self.storage, epoch)

    def _write(self, epoch: int, unit: int, data: UnitData) -> None:
        raw = build_shard(
            epoch, unit, unit_slots(self.manifest, unit), encode_unit(self.manifest, data), self.manifest.format_version
        )
        key = shard_key(epoch, unit)
        if not self.storage.write_new(key, raw):
            raise CacheError(
                f"{self.storage.where(key)} appeared while writing it: another process wrote the same unit"
            )
