"""Where a cache's bytes live: a local directory or any fsspec URL (s3://, gs://, memory://, ...).

Both backends and the manifest go through this small interface of whole-object operations, which is
what object stores offer. The commit rules need only two of its promises:

- ``write`` is all-or-nothing: a reader sees the old object, the new one, or none, never a part.
  Local disk gets it from write-to-temp + fsync + rename; an object store from a single PUT.
- ``write_new`` never replaces: it is the "first writer wins" used for the build header. Local disk
  uses link(2); S3 a conditional PUT (``If-None-Match: *``), through fsspec's ``mode="create"``.

Keys are relative POSIX paths (``e00000/topk_class/c/3/0``); ``""`` is the cache root itself.
"""

from __future__ import annotations

from pathlib import Path

from kdcache.teacher_cache.storage.atomic import is_temp
from kdcache.teacher_cache.storage.base import Storage, is_url
from kdcache.teacher_cache.storage.errors import CacheError, StorageError
from kdcache.teacher_cache.storage.flock import BuildLock
from kdcache.teacher_cache.storage.lease import LeaseLock
from kdcache.teacher_cache.storage.local import LocalStorage
from kdcache.teacher_cache.storage.locking import LOCK_NAME, CacheLockedError
from kdcache.teacher_cache.storage.remote import FsspecStorage

__all__ = [
    "LOCK_NAME",
    "BuildLock",
    "CacheError",
    "CacheLockedError",
    "FsspecStorage",
    "LeaseLock",
    "LocalStorage",
    "Storage",
    "StorageError",
    "build_lock",
    "is_temp",
    "is_url",
    "open_storage",
]


def open_storage(spec: str | Path | Storage) -> Storage:
    """The storage for a local path or an fsspec URL. S3 credentials and endpoint come from the usual
    AWS settings (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL_S3``, ``~/.aws``), read by botocore."""
    if isinstance(spec, Storage):
        return spec
    text = str(spec)
    if text.startswith("file://"):
        return LocalStorage(Path(text[len("file://") :]))
    return FsspecStorage(text) if is_url(text) else LocalStorage(Path(text))


def build_lock(storage: Storage, name: str = LOCK_NAME) -> BuildLock | LeaseLock:
    """The build lock of a cache folder: ``flock`` on local disk, a heartbeated lease on object stores
    (which have no flock). Both have acquire / check / release."""
    if isinstance(storage, LocalStorage):
        return BuildLock(storage.root, name)
    return LeaseLock(storage, name)
