"""Where a build without ``--out`` goes: ``ROOT/KEY/FORMAT``, new or reusing what is there."""

from __future__ import annotations

from dataclasses import dataclass

from kdcache.registry.key import cache_key
from kdcache.teacher_cache.storage import Storage
from kdcache.teacher_cache.store import Manifest, read_manifest
from kdcache.teacher_cache.store.layout import BUILD_HEADER, MANIFEST


@dataclass(frozen=True)
class Destination:
    root: Storage  # the registry root
    key: str
    out: str  # the cache's path or URL
    # What the build finds under its key: nothing ("new"), every asked epoch ("reused"), fewer epochs
    # than asked ("extended"), or an unfinished build of the same epochs ("resumed").
    state: str
    epochs_before: tuple[int, ...]  # complete epochs found there


def plan_destination(root: Storage, manifest: Manifest, epochs: int) -> tuple[Destination, Manifest]:
    """The destination of a build of ``manifest`` and the manifest to build with there.

    An existing cache under the key has the same content by construction; its layout and bookkeeping
    fields (unit size, the recipe's training part, the teacher's name as typed) are adopted so the
    build resumes or extends it instead of being refused for differences that change no label.
    """
    key = cache_key(manifest)
    storage = root.child(key).child(manifest.backend)
    final = read_manifest(storage, MANIFEST)
    base = read_manifest(storage, BUILD_HEADER) or final
    if base is None:
        return Destination(root, key, storage.where(), "new", ()), manifest
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
    return Destination(root, key, storage.where(), state, done), adopted
