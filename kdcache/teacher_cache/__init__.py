"""The teacher cache: a versioned, backend-neutral store of the teacher's soft labels per view.

Two rooms, dependencies flowing one way (teacher_pass -> store -> kdcache.storage):

- ``store/``: the versioned format (manifest, fields, units, top-k, content hash) and its backends
  (``store/zarr/``, ``store/wds/``); :func:`open_cache` and :func:`create_or_open_writer` are its face.
- ``teacher_pass/``: the teacher pass (``kdcache build``) and ``kdcache verify``.

Where bytes live is :mod:`kdcache.storage`; re-rendering stored views is :mod:`kdcache.views.replay`.
"""

from kdcache.teacher_cache import store as _store
from kdcache.teacher_cache.store import *  # noqa: F403  (the store's face is this package's face)

__all__ = list(_store.__all__)
