"""WebDataset backend: one tar shard per work unit at ``eEEEEE/uUUUUUU.tar``.

The shard is written as one all-or-nothing object that never replaces another: its presence is the
commit. Readers load shards directly; :func:`stream_views` streams them through a webdataset pipeline.
"""

from kdcache.teacher_cache.store.wds.reader import WdsReader
from kdcache.teacher_cache.store.wds.stream import wds_pipeline
from kdcache.teacher_cache.store.wds.writer import WdsWriter

__all__ = ["WdsReader", "WdsWriter", "wds_pipeline"]
