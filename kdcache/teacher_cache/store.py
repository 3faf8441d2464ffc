"""The cache store's public API in one import (what build, train and the CLI use)."""

from __future__ import annotations

from typing import Any

from kdcache import __version__
from kdcache.teacher_cache.fields import FIELDS, EpochBlock, UnitData, class_dtype, field_layout
from kdcache.teacher_cache.manifest import FORMAT_VERSION, Manifest, current_library_versions, utc_now_iso
from kdcache.teacher_cache.reader import CacheReader, open_cache
from kdcache.teacher_cache.units import num_units, unit_slots
from kdcache.teacher_cache.wds_store import stream_views
from kdcache.teacher_cache.writer import CacheWriter, create_or_open_writer

__all__ = [
    "FIELDS",
    "FORMAT_VERSION",
    "CacheReader",
    "CacheWriter",
    "EpochBlock",
    "Manifest",
    "UnitData",
    "class_dtype",
    "create_or_open_writer",
    "field_layout",
    "make_manifest",
    "num_units",
    "open_cache",
    "stream_views",
    "unit_slots",
]


def make_manifest(
    *,
    backend: str,
    teacher: dict[str, Any],
    recipe: dict[str, Any],
    seed: int,
    topk: int,
    class_names: list[str],
    dataset: dict[str, Any],
    epochs_planned: int,
    num_slots: int,
    unit_size: int,
    record_width: int,
    repeats: int | None = None,
    image_size: int | None = None,
) -> Manifest:
    """A build's manifest: repeats and image size default to the recipe's, num_classes is the teacher's,
    and version, creation time and library versions are filled in from this process."""
    augment = recipe.get("augment", {})
    return Manifest(
        kdcache_version=__version__,
        backend=backend,
        teacher=teacher,
        recipe=recipe,
        seed=seed,
        repeats=augment.get("repeats") if repeats is None else repeats,
        image_size=augment.get("image_size") if image_size is None else image_size,
        topk=topk,
        num_classes=teacher.get("num_classes"),
        class_names=tuple(class_names),
        dataset=dataset,
        epochs_planned=epochs_planned,
        num_slots=num_slots,
        unit_size=unit_size,
        record_width=record_width,
        created=utc_now_iso(),
        library_versions=current_library_versions(),
    )
