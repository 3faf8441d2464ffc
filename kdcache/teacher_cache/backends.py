"""Backend registry: manifest.backend -> writer / reader classes."""

from __future__ import annotations

from kdcache.teacher_cache.errors import ManifestError


def writer_class(backend: str) -> type:
    if backend == "zarr":
        from kdcache.teacher_cache.zarr_store import ZarrWriter

        return ZarrWriter
    if backend == "wds":
        from kdcache.teacher_cache.wds_store import WdsWriter

        return WdsWriter
    raise ManifestError(f"unknown cache backend {backend!r}; expected zarr or wds")


def reader_class(backend: str) -> type:
    if backend == "zarr":
        from kdcache.teacher_cache.zarr_store import ZarrReader

        return ZarrReader
    if backend == "wds":
        from kdcache.teacher_cache.wds_store import WdsReader

        return WdsReader
    raise ManifestError(f"unknown cache backend {backend!r}; expected zarr or wds")
