"""The root of every error the teacher cache raises, and the storage layer's own."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of all teacher-cache errors (store and storage)."""


class StorageError(CacheError):
    """A cache location that cannot be opened (unknown protocol, missing fsspec implementation)."""
