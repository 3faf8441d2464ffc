"""The content hash: one sha256 over everything a cache holds, independent of backend and write order.

Not to be confused with a view's digest (8 bytes of blake2b over its pixels, stored per view)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from kdcache.teacher_cache.store.fields import FIELDS, UnitData
from kdcache.teacher_cache.store.units import unit_slots

if TYPE_CHECKING:
    from kdcache.teacher_cache.store.base import CacheReader

DIGEST_TAG = b"kdcache-content-v1\n"


def content_hash(reader: CacheReader) -> str:
    """sha256 over the content fields of the manifest, then every committed unit in (epoch, unit) order,
    each as its fields in FIELDS order: a ``name dtype shape`` line followed by the little-endian bytes."""
    h = hashlib.sha256(DIGEST_TAG)
    h.update(json.dumps(reader.manifest.content_dict(), sort_keys=True, separators=(",", ":")).encode())
    by_epoch: dict[int, list[int]] = {}
    for e, u in reader.completed_units():
        by_epoch.setdefault(e, []).append(u)
    for e in sorted(by_epoch):
        units = sorted(by_epoch[e])
        if len(units) == reader.num_units:
            block = reader.load_epoch(e)  # one bulk read instead of one read per unit
            parts = ((u, block.rows(*unit_slots(reader.manifest, u))) for u in units)
        else:
            parts = ((u, reader.read_unit(e, u)) for u in units)
        for u, data in parts:
            h.update(f"\nunit {e} {u}\n".encode())
            _update(h, data)
    return h.hexdigest()


def _update(h: hashlib._Hash, data: UnitData) -> None:
    for name in FIELDS:
        a = getattr(data, name)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(f"{name} {a.dtype.str} {list(a.shape)}\n".encode())
        h.update(memoryview(a).cast("B"))
