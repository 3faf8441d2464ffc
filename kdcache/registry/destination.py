"""Where a build without ``--out`` goes: ``ROOT/KEY/FORMAT``, new or reusing what is there."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from kdcache.registry.key import cache_key
from kdcache.teacher_cache.build_config import BuildConfig
from kdcache.teacher_cache.layout import BUILD_HEADER, MANIFEST
from kdcache.teacher_cache.manifest import Manifest, read_manifest
from kdcache.teacher_cache.storage import Storage


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


def build_command(cfg: BuildConfig, root: str | None) -> str:
    """The ``kdcache build`` command line that rebuilds this cache into the registry."""
    parts = ["kdcache", "build", "--teacher", cfg.teacher, "--data", cfg.data, "--format", cfg.backend]
    parts += ["--epochs", str(cfg.epochs), "--seed", str(cfg.seed), "--topk", str(cfg.topk), "--recipe", cfg.recipe]
    for flag, value in (("--repeats", cfg.repeats), ("--image-size", cfg.image_size)):
        if value is not None:
            parts += [flag, str(value)]
    if cfg.teacher_weights:
        parts += ["--teacher-weights", cfg.teacher_weights]
    if root:
        parts += ["--cache-root", root]
    return shlex.join(parts)
