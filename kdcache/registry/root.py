"""Where the registry lives: ``--cache-root``, else ``$KDCACHE_HOME``, else the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path

from kdcache.storage import Storage, open_storage

ENV_VAR = "KDCACHE_HOME"


def default_root() -> str:
    """$KDCACHE_HOME, or e.g. ~/.cache/kdcache on Linux (platformdirs' user cache directory)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    from platformdirs import user_cache_dir

    return str(Path(user_cache_dir("kdcache", appauthor=False)))


def cache_root(spec: str | None = None) -> Storage:
    """The registry root: a directory or an fsspec URL (s3://bucket/kdcache)."""
    where = spec or default_root()
    if "://" not in where and Path(where).exists() and not Path(where).is_dir():
        from kdcache.errors import UsageError

        raise UsageError(
            f"the cache root {where} (--cache-root or ${ENV_VAR}) is a file: give a directory or an fsspec URL"
        )
    return open_storage(where)
