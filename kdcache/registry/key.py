"""A cache's key: a digest of exactly what determines its views.

Two builds with equal keys produce the same views, whatever their teacher, output format, unit size,
number of epochs or training recipe; so one cache serves both: more epochs extend it, and another
teacher becomes a layer of it (store/layers.py). Caches written before keys covered the views alone
keep the folder of their old key (which also covered teacher, weights, k and precision) and read as
one-layer caches.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kdcache.teacher_cache.store.manifest import Manifest

KEY_CHARS = 16  # 64 bits: collisions need ~4e9 caches under one root


def identity(m: Manifest) -> dict[str, Any]:
    """The view-determining fields of a manifest (what the key is a digest of): no teacher, weights,
    k or precision, which are each layer's own."""
    return {
        "dataset_fingerprint": m.dataset["fingerprint"],
        "augment": m.recipe.get("augment", {}),
        "seed": m.seed,
        "repeats": m.repeats,
        "image_size": m.image_size,
    }


def teacher_model(teacher: dict[str, Any]) -> str:
    """The teacher's resolved timm model (what `train --teacher` matches besides the typed name)."""
    return str(teacher.get("model") or teacher.get("id") or teacher["name"])


def cache_key(m: Manifest) -> str:
    text = json.dumps(identity(m), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=KEY_CHARS // 2).hexdigest()
