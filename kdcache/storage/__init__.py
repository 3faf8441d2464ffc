"""Where bytes live: a local directory or any fsspec URL (s3://, gs://, memory://, ...), for every part
of kdcache that writes (caches, the registry, training runs).

Caches and the manifest go through this small interface of whole-object operations, which is
what object stores offer. The commit rules need only two of its promises:

- ``write`` is all-or-nothing: a reader sees the old object, the new one, or none, never a part.
  Local disk gets it from write-to-temp + fsync + rename; an object store from a single PUT.
- ``write_new`` never replaces: it is the "first writer wins" used for the build header. Local disk
  uses link(2); S3 a conditional PUT (``If-None-Match: *``), through fsspec's ``mode="create"``.

Keys are relative POSIX paths (``e00000/topk_class/c/3/0``); ``""`` is the folder itself.
:func:`open_storage` (``open.py``) picks the implementation for a path or URL, :func:`build_lock` its lock.
"""

from __future__ import annotations

from kdcache.storage.atomic import is_temp
from kdcache.storage.base import Storage, is_url
from kdcache.storage.errors import CacheError, DiskFullError, StorageError, is_disk_full
from kdcache.storage.flock import BuildLock
from kdcache.storage.lease import LeaseLock
from kdcache.storage.local import LocalStorage
from kdcache.storage.locking import LOCK_NAME, CacheLockedError
from kdcache.storage.open import build_lock, open_storage
from kdcache.storage.remote import FsspecStorage

__all__ = [
    "LOCK_NAME",
    "BuildLock",
    "CacheError",
    "CacheLockedError",
    "DiskFullError",
    "FsspecStorage",
    "LeaseLock",
    "LocalStorage",
    "Storage",
    "StorageError",
    "build_lock",
    "is_disk_full",
    "is_temp",
    "is_url",
    "open_storage",
]
