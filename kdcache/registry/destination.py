"""Where a build without ``--out`` goes: ``ROOT/KEY/FORMAT``, new or reusing what is there."""

from __future__ import annotations

from dataclasses import dataclass

from kdcache.errors import UsageError
from kdcache.registry.key import cache_key, teacher_model
from kdcache.storage import Storage
from kdcache.teacher_cache.store import Manifest, read_manifest
from kdcache.teacher_cache.store.layers import layer_id, layer_storage
from kdcache.teacher_cache.store.layout import BUILD_HEADER, MANIFEST


@dataclass(frozen=True)
class Destination:
    root: Storage  # the registry root
    key: str
    out: str  # the cache's path or URL
    # What the build finds under its key: nothing ("new"), every asked epoch ("reused"), fewer epochs
    # than asked ("extended"), an unfinished build of the same epochs ("resumed"), or views of another
    # teacher that this one is added to as a layer ("layer").
    state: str
    epochs_before: tuple[int, ...]  # complete epochs found there (of the teacher's layer, if any)
    layer: str | None = None  # the teacher's layer id when the cache's first teacher is another


def plan_destination(root: Storage, manifest: Manifest, epochs: int) -> tuple[Destination, Manifest]:
    """The destination of a build of ``manifest`` and the manifest to build with there.

    An existing cache under the key has the same content by construction; its layout and bookkeeping
    fields (unit size, the recipe's training part, the teacher's name as typed) are adopted so the
    build resumes or extends it instead of being refused for differences that change no label.
    """
    key = cache_key(manifest)
    cache = root.child(key).child(manifest.backend)
    first = read_manifest(cache, BUILD_HEADER) or read_manifest(cache, MANIFEST)
    if first is None:
        return Destination(root, key, cache.where(), "new", ()), manifest
    # The views are the cache's by construction (equal keys): adopt its layout. The teacher's own
    # store is the cache itself when it is the cache's first teacher, else its layer.
    keys = ("model", "weights_sha256", "precision")
    lid = None if all(first.teacher.get(k) == manifest.teacher.get(k) for k in keys) else layer_id(manifest.teacher)
    storage = cache if lid is None else layer_storage(cache, lid)
    final = read_manifest(storage, MANIFEST)
    base = read_manifest(storage, BUILD_HEADER) or final
    if base is None:  # a new layer on the cache's views
        adopted = manifest.replace(unit_size=first.unit_size, recipe=first.recipe)
        return Destination(root, key, cache.where(), "layer", (), lid), adopted
    _check_labels(base, manifest, key, lid)
    adopted = manifest.replace(
        unit_size=base.unit_size,
        recipe=base.recipe,
        teacher={**base.teacher, "weights": manifest.teacher.get("weights")},
    )
    done = tuple(final.epochs_complete) if final is not None else ()
    if final is not None and set(range(epochs)) <= set(done):
        state = "reused"
    elif epochs > base.epochs_planned:
        state = "extended"
    else:
        state = "resumed"
    return Destination(root, key, cache.where(), state, done, lid), adopted


def _check_labels(stored: Manifest, asked: Manifest, key: str, layer: str | None) -> None:
    """One teacher keeps one label scheme per set of views: a build asking for another k or format must
    not be handed the stored one as if it were what was asked for."""
    fields = ("topk", "tail_classes", "draws", "format_version")
    if all(getattr(stored, f) == getattr(asked, f) for f in fields):
        return
    teacher = teacher_model(stored.teacher)

    rm = f"kdcache rm {key} --teacher {teacher}" if layer else f"kdcache rm {key} --format {stored.backend}"
    raise UsageError(
        f"the registry holds teacher {teacher}'s soft labels on these views (key {key}) as {stored.label_scheme} "
        f"(format {stored.format_version}); this build asks for {asked.label_scheme} (format "
        f"{asked.format_version}). Build with `{' '.join(stored.label_flags())}` to use them, delete them first "
        f"(`{rm}`), or pass --out DIR for a separate cache"
    )
