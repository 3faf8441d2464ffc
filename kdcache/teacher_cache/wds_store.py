"""WebDataset backend: one tar shard per work unit at ``eEEEEE/uUUUUUU.tar``.

The shard is written under a temporary name and linked into place: its presence is the commit.
Readers load shards directly; :func:`stream_views` streams them through a webdataset pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kdcache.teacher_cache.atomic import write_atomic
from kdcache.teacher_cache.errors import CacheError, CorruptShardError
from kdcache.teacher_cache.fields import FIELDS, UnitData
from kdcache.teacher_cache.layout import epoch_dirs, epoch_name, parse_unit, unit_name
from kdcache.teacher_cache.reader import CacheReader
from kdcache.teacher_cache.units import num_units, unit_slots
from kdcache.teacher_cache.wds_tar import ShardFormatError, build_shard, decode_members, read_shard
from kdcache.teacher_cache.writer import CacheWriter


def shard_path(root: Path, epoch: int, unit: int) -> Path:
    return root / epoch_name(epoch) / f"{unit_name(unit)}.tar"


def _committed(root: Path, epoch: int) -> set[int]:
    try:
        names = os.listdir(root / epoch_name(epoch))
    except FileNotFoundError:
        return set()
    return {u for u in (parse_unit(n, "tar") for n in names) if u is not None}


def _remedy(path: Path) -> str:
    return f"Delete {path} and run `kdcache build` again with the same arguments to rewrite the unit"


class WdsWriter(CacheWriter):
    def _prepare(self) -> None:
        pass  # nothing shared: epoch folders are made on demand (mkdir is idempotent)

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.root, epoch)

    def _write(self, epoch: int, unit: int, data: UnitData) -> None:
        raw = build_shard(epoch, unit, unit_slots(self.manifest, unit), data, self.manifest.format_version)
        path = shard_path(self.root, epoch, unit)
        if not write_atomic(path, raw, exclusive=True):
            raise CacheError(f"{path} appeared while writing it: another process wrote the same unit")


class WdsReader(CacheReader):
    def _check_layout(self) -> None:
        pass  # an empty build has no shard yet; nothing else to check

    def _epochs_present(self) -> set[int]:
        return set(epoch_dirs(self.root))

    def _completed_in_epoch(self, epoch: int) -> set[int]:
        return _committed(self.root, epoch)

    def _read_unit(self, epoch: int, unit: int) -> UnitData:
        path = shard_path(self.root, epoch, unit)
        a, b = unit_slots(self.manifest, unit)
        try:
            _meta, data = decode_members(read_shard(path.read_bytes()), epoch, unit)
            if data.num_views != b - a:
                raise ShardFormatError(f"holds {data.num_views} views, unit {unit} has {b - a}")
        except ShardFormatError as e:
            raise CorruptShardError(path, str(e), _remedy(path)) from None
        except FileNotFoundError:
            raise CorruptShardError(path, "shard vanished while reading", _remedy(path)) from None
        return data

    def _load_epoch(self, epoch: int) -> UnitData:
        return UnitData.concat([self._read_unit(epoch, u) for u in range(num_units(self.manifest))])

    def shard_urls(self, epochs: Iterable[int] | None = None) -> list[str]:
        """Paths of committed shards in (epoch, unit) order, for webdataset or any tar reader."""
        chosen = sorted(self._epochs_present()) if epochs is None else list(epochs)
        return [str(shard_path(self.root, e, u)) for e in chosen for u in sorted(self._completed_in_epoch(e))]


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
    unless other splitters are given. Usable directly as a torch IterableDataset.
    """
    import webdataset as wds

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
    pipeline = wds.WebDataset(
        urls,
        nodesplitter=nodesplitter or wds.split_by_node,
        workersplitter=workersplitter or wds.split_by_worker,
        shardshuffle=False,
        empty_check=False,  # more workers than shards is fine: the extra workers yield nothing
    )
    return pipeline.compose(_explode_units)


def _explode_units(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for sample in samples:
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        try:
            meta, data = decode_members(members)
        except ShardFormatError as e:
            url = sample.get("__url__", "?")
            raise CorruptShardError(url, str(e), _remedy(Path(str(url)))) from None
        arrays = data.arrays()
        start = meta["slots"][0]
        for i in range(data.num_views):
            view = {"epoch": meta["epoch"], "slot": start + i}
            view.update({name: arrays[name][i] for name in FIELDS})
            yield view
