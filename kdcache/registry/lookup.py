"""Finding the cache a training run needs from the teacher and the dataset, or saying how to build it."""

from __future__ import annotations

from typing import Any

from kdcache.registry.catalog import Entry, RegistryError, list_entries
from kdcache.registry.key import teacher_model
from kdcache.storage import Storage
from kdcache.teacher_cache.store.layers import teacher_label


def _has_layer(e: Entry, name: str, model: str, weights_sha256: str | None) -> bool:
    """Whether cache ``e`` has a finished layer of the teacher typed as ``name`` (timm model ``model``)."""
    layers = e.layers or ({**e.manifest.teacher, "finished": e.finished},)
    return any(
        t.get("finished", True)
        and (name == teacher_label(t) or model == teacher_model(t))
        and (weights_sha256 is None or t.get("weights_sha256") == weights_sha256)
        for t in layers
    )


def find_matches(
    root: Storage,
    teacher_models: str | list[str],
    fingerprint: str,
    weights_sha256: str | None = None,
    names: list[str] | None = None,
) -> list[Entry]:
    """Finished caches under ``root`` on this dataset with a finished layer of every teacher: each
    given as its resolved timm model (``teacher_models``) or the name typed at build time (``names``,
    same order); with its weights, if ``weights_sha256`` is given (one teacher only)."""
    models = [teacher_models] if isinstance(teacher_models, str) else list(teacher_models)
    typed = names or models
    out = []
    for e in list_entries(root, sizes=False):
        if not e.finished or not e.epochs_complete or e.manifest.dataset["fingerprint"] != fingerprint:
            continue
        if all(_has_layer(e, n, m, weights_sha256) for n, m in zip(typed, models, strict=True)):
            out.append(e)
    return out


def prefer_zarr(entries: list[Entry]) -> Entry:
    """Of one key's formats, zarr: it reads an epoch fastest."""
    return sorted(entries, key=lambda e: e.backend != "zarr")[0]


def choose(matches: list[Entry], root: Storage, hint: str) -> Entry:
    """The one matching cache; otherwise an error that lists them or gives the build command ``hint``."""
    if not matches:
        raise RegistryError(
            f"no cache under {root.where()} matches this teacher and dataset. Build one with:\n  {hint}"
        )
    keys = {e.key for e in matches}
    if len(keys) > 1:
        lines = [
            f"  --cache {e.key}  ({e.backend}, seed {e.manifest.seed}, {e.manifest.label_scheme}, "
            f"{e.manifest.image_size}px, x{e.manifest.repeats}, {len(e.epochs_complete)} epochs)"
            for e in matches
        ]
        raise RegistryError(
            f"{len(keys)} caches under {root.where()} match this teacher and dataset; choose one:\n" + "\n".join(lines)
        )
    return prefer_zarr(matches)


def resolve_train_cache(cfg: Any, build_hint: str | None) -> tuple[str, str | None]:
    """The cache a training run (``cfg``: cache, teacher, data, teacher_weights, cache_root) reads, and a
    line saying how it was found (None if given as a path).

    ``cfg.cache`` may be a path or URL, or a registry key (or unique key prefix). Without it, the registry
    is searched for the finished cache of the teacher (and its weights, if given) on the data;
    ``build_hint`` is the command that creates it, shown when there is none.
    """
    from kdcache.registry.catalog import touch
    from kdcache.registry.root import cache_root

    cache, teacher, data = cfg.cache, cfg.teacher, cfg.data
    if cache is not None and not is_registry_key(cache):
        return cache, None
    root = cache_root(cfg.cache_root)
    if cache is not None:
        entry = entry_for_key(root, cache, finished=True)
    else:
        if teacher is None or data is None:
            raise RegistryError(
                "give --cache (a path, URL or registry key), or --teacher and --data to find the cache in the "
                "registry (`kdcache ls` lists it)"
            )
        entry = choose(_matches_for(root, teacher, data, cfg.teacher_weights), root, build_hint or "kdcache build")
    touch(root, entry.key)
    return entry.location, f"registry: using cache {entry.key} ({entry.backend}) at {entry.location}"


def _matches_for(root: Storage, teacher: str, data: str, teacher_weights: str | None) -> list[Entry]:
    """``teacher``: one name, or several as `train --teacher T1,T2[:W]` takes them (store/layers.py)."""
    from kdcache.data.wds_source import open_source
    from kdcache.errors import UsageError
    from kdcache.models.teacher import create_teacher, resolve_name
    from kdcache.teacher_cache.store.layers import parse_teacher_spec

    try:
        names = [n for n, _ in parse_teacher_spec(teacher)]
    except ValueError as e:
        raise UsageError(str(e)) from None
    fingerprint = open_source(data).fingerprint
    sha = None
    if teacher_weights is not None and len(names) == 1:
        # The manifest's sha256 is over the model's state dict once the file is loaded into it.
        sha = create_teacher(names[0], teacher_weights)[1].weights_sha256
    return find_matches(root, [resolve_name(n) for n in names], fingerprint, sha, names=names)


def is_registry_key(text: str) -> bool:
    """A registry key or key prefix, not an existing path or a URL."""
    from pathlib import Path

    from kdcache.storage import is_url

    if is_url(text) or Path(text).exists():
        return False
    return 4 <= len(text) <= 16 and all(c in "0123456789abcdef" for c in text)


def entry_for_key(root: Storage, text: str, *, finished: bool) -> Entry:
    """The cache that key (prefix) ``text`` names; zarr if it has both formats."""
    from kdcache.registry.catalog import resolve_key

    key = resolve_key(root, text)
    entries = [e for e in list_entries(root, sizes=False, keys=[key]) if e.finished or not finished]
    if not entries:
        raise RegistryError(f"cache {key} under {root.where()} has no finished build yet; finish it first")
    return prefer_zarr(entries)


def resolve_cache_arg(cache: str, *, finished: bool = True, root: str | None = None) -> str:
    """CACHE as given to info/show/verify/export (and build --cache): a path or URL unchanged, a registry
    key (prefix) looked up under ``root`` (default $KDCACHE_HOME, or the default root)."""
    if not is_registry_key(cache):
        return cache
    from kdcache.registry.root import cache_root

    return entry_for_key(cache_root(root), cache, finished=finished).location


def recorded_build_command(cache: str) -> str | None:
    """The build command the registry recorded for the cache at ``cache`` (ROOT/KEY/FORMAT), or None
    when the cache is not in a registry or has no recorded command (it only feeds a hint)."""
    from kdcache.registry.catalog import read_entry_meta
    from kdcache.storage import open_storage

    parts = str(cache).rstrip("/").rsplit("/", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    try:
        command = read_entry_meta(open_storage(parts[0]), parts[1]).get("build_command")
    except Exception:  # unreadable or not a registry: fall back to composing the command
        return None
    return command if isinstance(command, str) else None
