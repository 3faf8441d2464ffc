"""The versioned cache format: its one public face.

Format: docs/cache-format.md. Write with :func:`create_or_open_writer`, read with :func:`open_cache`.
Opening and the backend table live in :mod:`kdcache.teacher_cache.store.open`; this module only re-exports.
"""

from kdcache.teacher_cache.store.base import CacheReader, CacheWriter
from kdcache.teacher_cache.store.content_hash import content_hash
from kdcache.teacher_cache.store.errors import (
    BuildNotFinishedError,
    CacheError,
    CorruptShardError,
    IncompleteEpochError,
    ManifestError,
    ManifestMismatchError,
    NotACacheError,
    UnsupportedFormatError,
)
from kdcache.teacher_cache.store.fields import FIELDS, EpochBlock, UnitData, class_dtype, field_layout
from kdcache.teacher_cache.store.manifest import (
    FORMAT_VERSION,
    Manifest,
    current_library_versions,
    read_manifest,
    utc_now_iso,
)
from kdcache.teacher_cache.store.open import (
    BACKENDS,
    create_or_open_writer,
    make_manifest,
    open_cache,
    open_layer,
    open_layers,
    stream_views,
)
from kdcache.teacher_cache.store.topk import logits_to_topk, topk_to_probs
from kdcache.teacher_cache.store.units import num_units, unit_slots

__all__ = [
    "BACKENDS",
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
    "content_hash",
    "create_or_open_writer",
    "current_library_versions",
    "field_layout",
    "logits_to_topk",
    "make_manifest",
    "num_units",
    "open_cache",
    "open_layer",
    "open_layers",
    "read_manifest",
    "stream_views",
    "topk_to_probs",
    "unit_slots",
    "utc_now_iso",
]
