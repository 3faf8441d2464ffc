"""Where the wds backend puts things: one shard per unit at ``eEEEEE/uUUUUUU.tar``."""

from __future__ import annotations

from kdcache.storage import Storage
from kdcache.teacher_cache.store.layout import epoch_name, parse_unit, unit_name


def shard_key(epoch: int, unit: int) -> str:
    return f"{epoch_name(epoch)}/{unit_name(unit)}.tar"


def committed_units(storage: Storage, epoch: int) -> set[int]:
    return {u for u in (parse_unit(n, "tar") for n in storage.listdir(epoch_name(epoch))) if u is not None}


def remedy(where: str) -> str:
    return f"Delete {where} and run `kdcache build` again with the same arguments to rewrite the unit"
