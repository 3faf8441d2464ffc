"""Choosing a storage and its build lock for a path or URL."""

from __future__ import annotations

from pathlib import Path

from kdcache.storage.base import Storage, is_url
from kdcache.storage.flock import BuildLock
from kdcache.storage.lease import LeaseLock
from kdcache.storage.local import LocalStorage
from kdcache.storage.locking import LOCK_NAME
from kdcache.storage.remote import FsspecStorage


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
