"""Errors raised by the cache store. Every message names what is wrong and what to do about it."""

from __future__ import annotations

from pathlib import Path

from kdcache.storage.errors import CacheError


class ManifestError(CacheError, ValueError):
    """A manifest (or build header) is malformed; the message names the field."""


class UnsupportedFormatError(ManifestError):
    """The cache was written by a newer kdcache with a format this version cannot read."""


class NotACacheError(CacheError):
    """The path holds no kdcache cache."""


class BuildNotFinishedError(CacheError):
    """The build header exists but the final manifest does not: the build is running or was interrupted."""


class ManifestMismatchError(CacheError):
    """An existing cache was started with different settings than the ones given now."""

    def __init__(self, message: str, fields: list[str]):
        super().__init__(message)
        self.fields = fields


class IncompleteEpochError(CacheError):
    """An epoch was requested whose units are not all committed."""

    def __init__(self, message: str, epoch: int, missing_units: list[int]):
        super().__init__(message)
        self.epoch = epoch
        self.missing_units = missing_units


class CorruptShardError(CacheError):
    """A committed shard or chunk file is missing, truncated or fails its checksum."""

    def __init__(self, path: Path | str, reason: str, remedy: str):
        super().__init__(f"corrupt cache file {path}: {reason}. {remedy}")
        self.path = path if isinstance(path, str) and "://" in path else Path(path)  # URLs stay strings
