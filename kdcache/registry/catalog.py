"""The caches under a registry root: list them, record their use, find them by key, remove them.

Layout: ``ROOT/KEY/FORMAT/`` is a cache (FORMAT is zarr or wds) and ``ROOT/KEY/entry.json`` records
when it was created and last used, and the command that built it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from kdcache.storage import Storage
from kdcache.teacher_cache.store.errors import CacheError
from kdcache.teacher_cache.store.manifest import Manifest, utc_now_iso

ENTRY_FILE = "entry.json"
FORMATS = ("zarr", "wds")
_KEY_RE = re.compile(r"^[0-9a-f]{16}$")


class RegistryError(CacheError):
    """A key that names no cache (or several), or a cache that cannot be removed now."""


@dataclass(frozen=True)
class Entry:
    key: str
    backend: str
    location: str  # the cache's full path or URL
    manifest: Manifest
    finished: bool
    epochs_complete: tuple[int, ...]
    views: int
    bytes: int | None  # None: not measured (ls --no-size)
    last_used: str | None
    build_command: str | None
    # Every teacher layer: the first layer's teacher dict, then each further layer's, with "layer" (its
    # id; None for the first) and "finished" added. Empty: not read (treat as the first teacher alone).
    layers: tuple[dict[str, Any], ...] = ()

    @property
    def created(self) -> str:
        return self.manifest.created

    @property
    def teacher(self) -> str:
        t = self.manifest.teacher
        return str(t.get("name") or t.get("model") or t.get("id"))

    @property
    def teachers(self) -> list[str]:
        """The teachers of every layer, first layer first (unfinished layers marked)."""
        from kdcache.teacher_cache.store.layers import teacher_label

        if not self.layers:
            return [self.teacher]
        return [teacher_label(t) + ("" if t.get("finished", True) else " (building)") for t in self.layers]

    @property
    def dataset(self) -> str:
        d = self.manifest.dataset
        return f"{d.get('source') or d.get('kind', '?')} ({d['num_samples']} samples)"

    def to_json(self) -> dict[str, Any]:
        from kdcache.registry.key import identity

        return {
            "key": self.key,
            "format": self.backend,
            "location": self.location,
            "finished": self.finished,
            "teacher": self.teacher,
            "teachers": self.teachers,
            "dataset": self.manifest.dataset.get("source"),
            "num_samples": self.manifest.dataset["num_samples"],
            "identity": identity(self.manifest),
            "epochs_complete": list(self.epochs_complete),
            "epochs_planned": self.manifest.epochs_planned,
            "views": self.views,
            "bytes": self.bytes,
            "created": self.created,
            "last_used": self.last_used,
            "build_command": self.build_command,
        }


def read_entry_meta(root: Storage, key: str) -> dict[str, Any]:
    try:
        meta = json.loads(root.read(f"{key}/{ENTRY_FILE}"))
    except (FileNotFoundError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def record(root: Storage, key: str, *, used: bool, build_command: str | None = None) -> None:
    """Create or update ``KEY/entry.json``: creation time once, last use now if ``used``."""
    meta = read_entry_meta(root, key)
    now = utc_now_iso()
    meta.setdefault("key", key)
    meta.setdefault("created", now)
    if used:
        meta["last_used"] = now
    if build_command and not meta.get("build_command"):
        meta["build_command"] = build_command
    root.write(f"{key}/{ENTRY_FILE}", (json.dumps(meta, indent=2) + "\n").encode())


def touch(root: Storage, key: str) -> None:
    record(root, key, used=True)


def list_entries(root: Storage, *, sizes: bool = True, keys: list[str] | None = None) -> list[Entry]:
    """Every cache under ``root`` (finished or not), most recently used first."""
    from kdcache.teacher_cache.store import open_cache, open_layers
    from kdcache.teacher_cache.store.errors import NotACacheError, UnsupportedFormatError

    out = []
    for key in keys if keys is not None else sorted(k for k in root.listdir() if _KEY_RE.match(k)):
        meta = read_entry_meta(root, key)
        for backend in FORMATS:
            storage = root.child(key).child(backend)
            try:
                reader = open_cache(storage, allow_unfinished=True)
            except NotACacheError:
                continue
            except UnsupportedFormatError as e:  # written by a newer kdcache: list the rest
                logging.getLogger("kdcache").warning("%s skipped: %s", storage.where(), e)
                continue
            m = reader.manifest
            # A finished cache's manifest says which epochs are whole; counting committed units
            # instead would list every epoch folder, which is slow on an object store.
            if reader.finished:
                complete, views = tuple(m.epochs_complete), len(m.epochs_complete) * m.num_slots
            else:
                complete, views = tuple(reader.epochs_complete), reader.num_views()
            out.append(
                Entry(
                    key=key,
                    backend=backend,
                    location=storage.where(),
                    manifest=m,
                    finished=reader.finished,
                    epochs_complete=complete,
                    views=views,
                    bytes=storage.total_size() if sizes else None,
                    last_used=meta.get("last_used"),
                    build_command=meta.get("build_command"),
                    layers=tuple(
                        {**r.manifest.teacher, "layer": lid, "finished": r.finished}
                        for lid, r in open_layers(storage, allow_unfinished=True)
                    ),
                )
            )
    return sorted(out, key=lambda e: (e.last_used or e.created, e.key), reverse=True)


def resolve_key(root: Storage, text: str) -> str:
    """The key that ``text`` (a key or a unique prefix of at least 4 characters) names under ``root``."""
    keys = sorted(k for k in root.listdir() if _KEY_RE.match(k))
    if text in keys:
        return text
    found = [k for k in keys if len(text) >= 4 and k.startswith(text)]
    if len(found) == 1:
        return found[0]
    if found:
        raise RegistryError(f"{text!r} matches several caches under {root.where()}: {', '.join(found)}")
    raise RegistryError(
        f"no cache {text!r} under {root.where()}; `kdcache ls --cache-root {root.where()}` lists the keys"
    )


def remove_entry(root: Storage, key: str, backend: str | None = None) -> None:
    """Delete one format of cache KEY (or all of it). Refuses while a build holds the cache's lock."""
    from kdcache.storage import CacheLockedError, build_lock

    entry = root.child(key)
    chosen = [backend] if backend else [b for b in FORMATS if entry.child(b).exists()]
    for b in chosen:
        storage = entry.child(b)
        if not storage.exists():
            raise RegistryError(f"cache {key} has no {b} format under {root.where()}")
        lock = build_lock(storage)
        try:
            lock.acquire()
        except CacheLockedError as e:
            raise RegistryError(f"cannot remove {storage.where()}: {e}") from None
        try:
            storage.delete_all()
        finally:
            lock.release()
    if not any(entry.child(b).exists() for b in FORMATS):
        entry.delete_all()


def remove_layer(root: Storage, key: str, teacher: str, backend: str | None = None) -> list[str]:
    """Delete the layer of ``teacher`` (name, model or layer id) from cache KEY (each format, or
    ``backend``), leaving the views and the other layers alone. Returns the removed layers' locations.
    The cache's first layer holds the views and cannot be removed alone."""
    from kdcache.storage import CacheLockedError, build_lock
    from kdcache.teacher_cache.store import open_layer

    entry = root.child(key)
    chosen = [backend] if backend else [b for b in FORMATS if entry.child(b).exists()]
    removed = []
    for b in chosen:
        cache = entry.child(b)
        if not cache.exists():
            raise RegistryError(f"cache {key} has no {b} format under {root.where()}")
        layer = open_layer(cache, teacher, allow_unfinished=True)
        if layer.storage.where() == cache.where():
            raise RegistryError(
                f"{teacher!r} is the first teacher of cache {key} ({b}), whose store holds the views every layer "
                f"shares; remove the whole cache with `kdcache rm {key}`"
            )
        lock = build_lock(layer.storage)
        try:
            lock.acquire()
        except CacheLockedError as e:
            raise RegistryError(f"cannot remove {layer.storage.where()}: {e}") from None
        try:
            layer.storage.delete_all()
        finally:
            lock.release()
        removed.append(layer.storage.where())
    return removed
