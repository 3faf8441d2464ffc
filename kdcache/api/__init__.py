"""kdcache's public Python API: the same path ``kdcache train`` takes, for a training loop of your own.

Re-exported by ``kdcache`` itself (``import kdcache; kdcache.open_cache(...)``); docs/python-api.md.
"""

from kdcache.api.cache import Cache, open_cache
from kdcache.api.loader import Batch, CacheLoader
from kdcache.api.training import create_optimizer, create_scheduler, create_student, normalizer
from kdcache.student.loss import KDLoss, LossParts
from kdcache.student.targets import TeacherTarget

__all__ = [
    "Batch",
    "Cache",
    "CacheLoader",
    "KDLoss",
    "LossParts",
    "TeacherTarget",
    "create_optimizer",
    "create_scheduler",
    "create_student",
    "normalizer",
    "open_cache",
]
