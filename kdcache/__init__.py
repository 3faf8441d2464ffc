"""kdcache: run the teacher once, offline; replay the exact views for any student.

The public API (docs/python-api.md) is loaded on first use, so ``import kdcache`` and ``kdcache --help``
stay free of torch and timm until a name below is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdcache.version import __version__

__all__ = [
    "Batch",
    "Cache",
    "CacheLoader",
    "KDLoss",
    "LossParts",
    "TeacherTarget",
    "__version__",
    "create_optimizer",
    "create_scheduler",
    "create_student",
    "normalizer",
    "open_cache",
]

if TYPE_CHECKING:
    from kdcache.api import (
        Batch,
        Cache,
        CacheLoader,
        KDLoss,
        LossParts,
        TeacherTarget,
        create_optimizer,
        create_scheduler,
        create_student,
        normalizer,
        open_cache,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("kdcache.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kdcache' has no attribute {name!r}")
