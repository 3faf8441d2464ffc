"""Every ``kdcache build`` command line that kdcache prints or records, composed in one place.

Messages tell a user the exact command that creates or extends a cache (train's "extend the cache",
the registry's "no cache yet", what the registry records), so they must all agree on the options
that determine a cache's content.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from kdcache.teacher_cache.store.layers import parse_teacher_spec
from kdcache.teacher_cache.store.manifest import Manifest
from kdcache.teacher_cache.teacher_pass.config import BuildConfig


def build_command(cfg: BuildConfig) -> str:
    """The command that builds ``cfg``'s cache into the registry: what determines its content, not where it
    goes or how fast."""
    parts = ["kdcache", "build", "--teacher", cfg.teacher, "--data", cfg.data, "--format", cfg.format]
    parts += ["--epochs", str(cfg.resolved_epochs()), "--seed", str(cfg.seed)]
    # A settled scheme is written out in full, so the command means the same whatever the defaults become;
    # an unsettled one (a hint for a teacher not loaded yet) leaves the choice to the build.
    if cfg.topk is not None:
        parts += ["--topk", str(cfg.topk)]
    parts += ["--recipe", cfg.recipe]
    version = cfg.implied_format()
    if version is not None:
        parts += ["--format-version", str(version)]
    if version == 2:
        parts += ["--tail-classes", str(cfg.tail())]
    if version == 3:
        parts += ["--draws", str(cfg.draws_per_view())]
    for flag, value in (("--repeats", cfg.repeats), ("--image-size", cfg.image_size)):
        if value is not None:
            parts += [flag, str(value)]
    if cfg.teacher_weights:
        parts += ["--teacher-weights", cfg.teacher_weights]
    if cfg.cache_root:
        parts += ["--cache-root", cfg.cache_root]
    return shlex.join(parts)


def extend_command(m: Manifest, cache: str, epochs: int) -> str:
    """The command that extends the cache at ``cache`` (manifest ``m``) to ``epochs`` epochs: every option
    that determines its content, read back from the manifest."""
    t = m.teacher
    parts = ["kdcache", "build", "--teacher", str(t.get("name") or t["id"]), "--data", str(m.dataset["source"])]
    weights = t.get("weights")
    if weights and Path(str(weights)).is_file():  # timm's own pretrained weights need no option
        parts += ["--teacher-weights", str(weights)]
    parts += ["--format", m.backend, "--recipe", str(m.recipe.get("name") or "seed"), "--seed", str(m.seed)]
    parts += [*m.label_flags(), "--image-size", str(m.image_size), "--repeats", str(m.repeats)]
    parts += ["--out", cache, "--epochs", str(epochs)]
    return shlex.join(parts)


def with_epochs(command: str, epochs: int) -> str:
    """A recorded ``kdcache build`` command with its --epochs set to ``epochs``."""
    parts = shlex.split(command)
    for i, p in enumerate(parts):
        if p == "--epochs" and i + 1 < len(parts):
            parts[i + 1] = str(epochs)
            return shlex.join(parts)
        if p.startswith("--epochs="):
            parts[i] = f"--epochs={epochs}"
            return shlex.join(parts)
    return shlex.join([*parts, "--epochs", str(epochs)])


def registry_build_hint(
    teacher: str | None,
    data: str | None,
    *,
    teacher_weights: str | None = None,
    cache_root: str | None = None,
    epochs: int | None = None,
) -> str | None:
    """The command(s) that create the registry cache ``kdcache train --teacher T --data D`` looks up (None
    without both), with ``epochs`` epochs (None: the recipe's): one build for the first teacher of a
    ``T1,T2`` list, then one per further teacher, which the registry adds as a layer."""
    if teacher is None or data is None:
        return None
    try:
        names = [name for name, _ in parse_teacher_spec(teacher)]
    except ValueError:
        names = [teacher]
    commands = [
        build_command(
            BuildConfig(
                teacher=name,
                data=data,
                teacher_weights=teacher_weights if len(names) == 1 else None,
                cache_root=cache_root,
                epochs=epochs,
            )
        )
        for name in names
    ]
    return "\n  ".join(commands)
