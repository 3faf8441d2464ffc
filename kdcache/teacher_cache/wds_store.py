"""WebDataset backend: one tar shard per work unit at ``eEEEEE/uUUUUUU.tar``.

The shard is written as one all-or-nothing object that never replaces another: its presence is the
commit. Readers load shards directly; :func:`stream_views` streams them through a webdataset pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kdcache.teacher_cache.errors import CacheError, CorruptShardError
from kdcache.teacher_cache.fields import FIELDS, UnitData
from kdcache.teacher_cache.layout import epoch_name, parse_epoch, parse_unit, unit_name
from kdcache.teacher_cache.reader import CacheReader
from kdcache.teacher_cache.storage import Storage, is_url
from kdcache.teacher_cache.units import num_units, unit_slots
from kdcache.teacher_cache.wds_tar import ShardFormatError, build_shard, decode_members, read_shard
from kdcache.teacher_cache.writer import CacheWriter


def shard_key(epoch: int, unit: int) -> str:
    return f"{epoch_name(epoch)}/{unit_name(unit)}.tar"


def _committed(storage: Storage, epoch: int) -> set[int]:
    return {u for u in (parse_unit(n, "tar") for n in storage.listdir(epoch_name(epoch))) if u is not None}


def _remedy(where: str) -> str:
    return f"Delete {where} and run `kdcache build` again with the same arguments to rewrite the unit"


class WdsWriter(CacheWriter):
    def _prepare(self) -> None:
        pass  # nothing shared: epoch folders are made on demand

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.storage, epoch)

    def _write(self, epoch: int, unit: int, data: UnitData) -> None:
        raw = build_shard(epoch, unit, unit_slots(self.manifest, unit), data, self.manifest.format_version)
        key = shard_key(epoch, unit)
        if not self.storage.write_new(key, raw):
            raise CacheError(
                f"{self.storage.where(key)} appeared while writing it: another process wrote the same unit"
            )


class WdsReader(CacheReader):
    def _check_layout(self) -> None:
        pass  # an empty build has no shard yet; nothing else to check

    def _epochs_present(self) -> set[int]:
        return {e for e in (parse_epoch(n) for n in self.storage.listdir()) if e is not None}

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.storage, epoch)

    def _decode(self, epoch: int, unit: int, raw: bytes) -> UnitData:
        a, b = unit_slots(self.manifest, unit)
        where = self.storage.where(shard_key(epoch, unit))
        try:
            _meta, data = decode_members(read_shard(raw), epoch, unit)
            if data.num_views != b - a:
                raise ShardFormatError(f"holds {data.num_views} views, unit {unit} has {b - a}")
        except ShardFormatError as e:
            raise CorruptShardError(where, str(e), _remedy(where)) from None
        return data

    def _read_units(self, epoch: int, units: list[int]) -> list[UnitData]:
        try:
            raws = self.storage.read_many([shard_key(epoch, u) for u in units])
        except FileNotFoundError as e:
            raise CorruptShardError(e.filename, "shard vanished while reading", _remedy(e.filename)) from None
        return [self._decode(epoch, u, raw) for u, raw in zip(units, raws, strict=True)]

    def _read_unit(self, epoch: int, unit: int) -> UnitData:
        return self._read_units(epoch, [unit])[0]

    def _load_epoch(self, epoch: int) -> UnitData:
        return UnitData.concat(self._read_units(epoch, list(range(num_units(self.manifest)))))

    def shard_urls(self, epochs: Iterable[int] | None = None) -> list[str]:
        """Paths (or URLs) of committed shards in (epoch, unit) order, for webdataset or any tar reader."""
        chosen = sorted(self._epochs_present()) if epochs is None else list(epochs)
        return [self.storage.where(shard_key(e, u)) for e in chosen for u in sorted(self._completed_in_epoch(e))]


def stream_views(
    path: str | Path,
    epochs: Iterable[int] | None = None,
    *,
    nodesplitter: Any = None,
    workersplitter: Any = None,
) -> Any:
    """A webdataset pipeline over the committed shards of a wds cache, yielding one dict per view.

    Each dict holds epoch, slot and every field of the view. Shards are split across nodes
    (torch.distributed ranks) and DataLoader workers by ``wds.split_by_node`` / ``wds.split_by_worker``
    unless other splitters are given. Usable directly as a torch IterableDataset. Remote caches
    (s3://...) are opened through fsspec, since webdataset's own opener only knows local files and
    command pipes.
    """
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from kdcache.teacher_cache.reader import open_cache

    reader = open_cache(path)
    if not isinstance(reader, WdsReader):
        raise CacheError(
            f"{path} is a {reader.manifest.backend} cache; stream_views needs a wds one: "
            f"kdcache export {path} --format wds --out DIR"
        )
    urls = reader.shard_urls(epochs)
    if not urls:
        raise CacheError(f"{path} has no committed shards for epochs {epochs if epochs is not None else 'any'}")
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        nodesplitter or wds.split_by_node,
        workersplitter or wds.split_by_worker,
        _open_urls,
        tar_file_expander,
        group_by_keys,
        _explode_units,
    )


def _open_urls(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    import fsspec

    for sample in samples:
        url = sample["url"]
        with fsspec.open(url, "rb") if is_url(url) else open(url, "rb") as stream:
            yield {**sample, "stream": stream}


def _explode_units(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for sample in samples:
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        try:
            meta, data = decode_members(members)
        except ShardFormatError as e:
            url = sample.get("__url__", "?")
            raise CorruptShardError(url, str(e), _remedy(str(url))) from None
        arrays = data.arrays()
        start = meta["slots"][0]
        for i in range(data.num_views):
            view = {"epoch": meta["epoch"], "slot": start + i}
            view.update({name: arrays[name][i] for name in FIELDS})
            yield view
