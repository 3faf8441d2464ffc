"""The teacher cache: a versioned, backend-neutral store of the teacher's top-k soft labels per view.

Format: docs/cache-format.md. Write with :func:`create_or_open_writer`, read with :func:`open_cache`.
"""

from kdcache.teacher_cache.errors import (
    BuildNotFinishedError,
    CacheError,
    CorruptShardError,
    IncompleteEpochError,
    ManifestError,
    ManifestMismatchError,
    NotACacheError,
    UnsupportedFormatError,
)
from kdcache.teacher_cache.fields import FIELDS, EpochBlock, UnitData, class_dtype, field_layout
from kdcache.teacher_cache.manifest import (
    FORMAT_VERSION,
    Manifest,
    current_library_versions,
    utc_now_iso,
)
from kdcache.teacher_cache.reader import CacheReader, open_cache
from kdcache.teacher_cache.topk import logits_to_topk, topk_to_probs
from kdcache.teacher_cache.units import num_units, unit_slots
from kdcache.teacher_cache.wds_store import stream_views
from kdcache.teacher_cache.writer import CacheWriter, create_or_open_writer

__all__ = [
    "FIELDS",
    "FORMAT_VERSION",
    "BuildNotFinishedError",
    "CacheError",
    "CacheReader",
    "CacheWriter",
    "CorruptShardError",
    "EpochBlock",
    "IncompleteEpochError",
    "Manifest",
    "ManifestError",
    "ManifestMismatchError",
    "NotACacheError",
    "UnitData",
    "UnsupportedFormatError",
    "class_dtype",
    "create_or_open_writer",
    "current_library_versions",
    "field_layout",
    "logits_to_topk",
    "num_units",
    "open_cache",
    "stream_views",
    "topk_to_probs",
    "unit_slots",
    "utc_now_iso",
]
