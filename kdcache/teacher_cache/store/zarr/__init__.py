"""Zarr v3 backend: one group per epoch, one array per field, one chunk per work unit.

A unit is exactly one chunk file of each array, so exactly one process writes each file (two writers
inside one zarr shard lose data). A unit is committed by its marker ``done/eEEEEE/uUUUUUU.json``,
written only after every chunk file of the unit is durable.

zarr encodes and decodes; the bytes move through :mod:`storage` (local disk or an object store), because
the commit rules (atomic objects, a marker written last) are kdcache's, not zarr's. The layout on disk
is plain zarr: ``zarr.open_group(path)`` reads any epoch without kdcache.
"""

from kdcache.teacher_cache.store.zarr.reader import ZarrReader
from kdcache.teacher_cache.store.zarr.writer import ZarrWriter

__all__ = ["ZarrReader", "ZarrWriter"]
