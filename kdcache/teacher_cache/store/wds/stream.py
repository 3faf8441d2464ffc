"""Streaming a wds cache's views through a webdataset pipeline."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from kdcache.storage import is_url
from kdcache.teacher_cache.store.errors import CacheError, CorruptShardError
from kdcache.teacher_cache.store.fields import FIELDS
from kdcache.teacher_cache.store.wds.layout import remedy
from kdcache.teacher_cache.store.wds.reader import WdsReader
from kdcache.teacher_cache.store.wds.tar import ShardFormatError, decode_members


def wds_pipeline(
    reader: WdsReader,
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

    urls = reader.shard_urls(epochs)
    if not urls:
        raise CacheError(f"{reader.root} has no committed shards for epochs {epochs if epochs is not None else 'any'}")
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
            raise CorruptShardError(url, str(e), remedy(str(url))) from None
        arrays = data.arrays()
        start = meta["slots"][0]
        for i in range(data.num_views):
            view = {"epoch": meta["epoch"], "slot": start + i}
            view.update({name: arrays[name][i] for name in FIELDS})
            yield view
