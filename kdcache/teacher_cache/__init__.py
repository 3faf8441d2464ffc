"""The teacher cache: a versioned, backend-neutral store of the teacher's soft labels per view.

Three rooms, dependencies flowing one way (build -> store -> storage):

- ``store/``: the versioned format (manifest, fields, units, top-k, content hash) and its backends
  (``store/zarr/``, ``store/wds/``); :func:`open_cache` and :func:`create_or_open_writer` are its face.
- ``storage/``: where bytes live (local disk, fsspec URLs), atomic writes, the build lock and lease.
- ``build/``: the teacher pass (``kdcache build``) and ``kdcache verify``.

``replay`` re-renders stored views and compares their digests, for verify and for training.
"""

from kdcache.teacher_cache import store as _store
from kdcache.teacher_cache.store import *  # noqa: F403  (the store's face is this package's face)

__all__ = list(_store.__all__)
