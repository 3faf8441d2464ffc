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

from kdcache.teacher_cache.storage import Storage
from kdcache.teacher_cache.store.manifest import RESUMABLE_FIELDS, Manifest

LAYERS_DIR = "layers"
VIEW_FIELDS = ("sample_id", "repeat", "params", "digest")  # the same in every layer
LABEL_FIELDS = ("topk_logprob", "topk_class")  # each layer's own
# Manifest fields in which a layer may differ from the cache's first layer: its teacher and k, and the
# bookkeeping of the process that wrote it. Everything else describes the views and must be equal.
LAYER_FIELDS = frozenset({"teacher", "topk", "kdcache_version", "library_versions"})
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
