"""What every build lock shares: the lock's name in a cache folder, and the error when it is taken."""

from __future__ import annotations

LOCK_NAME = "build.lock"


class CacheLockedError(RuntimeError):
    """Another build is writing this cache."""
