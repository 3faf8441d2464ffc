"""The root of every error the teacher cache raises, and the storage layer's own."""

from __future__ import annotations

import errno

# A write that found no room: the disk (ENOSPC) or the user's quota (EDQUOT) is full.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class CacheError(Exception):
    """Base class of all teacher-cache errors (store and storage)."""


class StorageError(CacheError):
    """A cache location that cannot be opened (unknown protocol, missing fsspec implementation)."""


class DiskFullError(StorageError):
    """A build stopped because a write found no space; the message says where and how to resume."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _DISK_FULL
