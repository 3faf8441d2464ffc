"""Teachers as layers of one set of views.

A cache's own store (its manifest, units and arrays) is its first layer: the views (sample ids,
repeats, params, digests) and the soft labels of the teacher it was built with. Every further teacher
is a layer at ``CACHE/layers/<layer id>/``: a store of the same format whose manifest differs from the
cache's only in the teacher's fields, and whose view arrays are the cache's, re-rendered from the stored
params and checked against the stored digests before the teacher saw them. Readers of caches without
``layers/`` (every cache written before layers existed) see a one-layer cache; a reader that does not
know layers reads the first layer and ignores the folder.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from kdcache.storage import Storage
from kdcache.teacher_cache.store.manifest import RESUMABLE_FIELDS, Manifest

LAYERS_DIR = "layers"
VIEW_FIELDS = ("sample_id", "repeat", "params", "digest")  # the same in every layer
# Manifest fields in which a layer may differ from the cache's first layer: its teacher and labels, and the
# bookkeeping of the process that wrote it. Everything else describes the views and must be equal.
LAYER_FIELDS = frozenset(
    {"teacher", "topk", "tail_classes", "draws", "format_version", "kdcache_version", "library_versions"}
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def teacher_label(teacher: dict[str, Any]) -> str:
    """The teacher's name as the user typed it (what `--teacher` selects a layer by)."""
    return str(teacher.get("name") or teacher.get("model") or teacher.get("id"))


def layer_id(teacher: dict[str, Any]) -> str:
    """Folder name of a teacher's layer: its name, made path-safe, and 8 hex digits of what makes its
    labels (model, weights, precision), so two weights of one architecture get two layers."""
    ident = "|".join(str(teacher.get(k, "")) for k in ("model", "weights_sha256", "precision"))
    tag = hashlib.blake2b(ident.encode(), digest_size=4).hexdigest()
    return f"{_UNSAFE.sub('_', teacher_label(teacher))[:48]}-{tag}"


def view_differences(first: Manifest, other: Manifest) -> list[str]:
    """The fields (dotted, as Manifest.differences) in which ``other`` describes different views than
    ``first``; empty if ``other`` can be a layer of ``first``'s cache."""
    return first.differences(other, ignore=RESUMABLE_FIELDS | LAYER_FIELDS)


def layer_storage(cache: Storage, layer: str) -> Storage:
    return cache.child(LAYERS_DIR).child(layer)


def layer_ids(cache: Storage) -> list[str]:
    """Ids of the layers beyond the first, sorted (finished or not)."""
    return sorted(n for n in cache.listdir(LAYERS_DIR) if not n.startswith("."))


def parse_teacher_spec(text: str) -> list[tuple[str, float]]:
    """``T1``, ``T1,T2`` or ``T1:0.7,T2:0.3`` -> [(name, weight)], weights normalised to sum to 1
    (equal when none is given). Names are teacher names as typed at build time."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--teacher {text!r}: expected NAME, NAME,NAME or NAME:WEIGHT,NAME:WEIGHT")
    named: list[tuple[str, float | None]] = []
    for p in parts:
        name, sep, w = p.rpartition(":") if ":" in p else (p, "", "")
        try:
            weight = float(w) if sep else None
        except ValueError:
            raise ValueError(f"--teacher {text!r}: the weight of {name!r} is not a number ({w!r})") from None
        if weight is not None and not weight > 0:
            raise ValueError(f"--teacher {text!r}: weights must be > 0, got {weight:g} for {name!r}")
        named.append((name, weight))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"--teacher {text!r} names a teacher twice")
    given = [w for _, w in named if w is not None]
    if given and len(given) != len(named):
        raise ValueError(f"--teacher {text!r}: give a weight to every teacher or to none")
    weights = given if given else [1.0] * len(named)
    total = sum(weights)
    return [(n, w / total) for n, w in zip(names, weights, strict=True)]
