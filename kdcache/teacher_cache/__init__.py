"""The teacher cache: a versioned, backend-neutral store of the teacher's soft labels per view.

Three rooms, dependencies flowing one way (build -> store -> storage):

- ``store/``: the versioned format (manifest, fields, units, top-k, content hash) and its backends
  (``store/zarr/``, ``store/wds/``); :func:`open_cache` and :func:`create_or_open_writer` are its face.
- ``storage/``: where bytes live (local disk, fsspec URLs), atomic writes, the build lock and lease.
- ``build/``: the teacher pass (``kdcache build``) and ``kdcache verify``.

``replay`` re-renders stored views and compares their digests, for verify and for training.
"""

from kdcache.teacher_cache.store import (
    FIELDS,
    FORMAT_VERSION,
    BuildNotFinishedError,
    CacheError,
    CacheReader,
    CacheWriter,
    CorruptShardError,
    EpochBlock,
    IncompleteEpochError,
    Manifest,
    ManifestError,
    ManifestMismatchError,
    NotACacheError,
    UnitData,
    UnsupportedFormatError,
    class_dtype,
    content_hash,
    create_or_open_writer,
    current_library_versions,
    field_layout,
    logits_to_topk,
    num_units,
    open_cache,
    stream_views,
    topk_to_probs,
    unit_slots,
    utc_now_iso,
)

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
    "content_hash",
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
