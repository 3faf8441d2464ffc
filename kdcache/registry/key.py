"""A cache's key: a digest of exactly what determines its content.

Two builds with equal keys produce the same views and the same soft labels, whatever their output
format, unit size, number of epochs or training recipe; so one cache serves both, and more epochs
extend it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kdcache.teacher_cache.store.manifest import Manifest

KEY_CHARS = 16  # 64 bits: collisions need ~4e9 caches under one root


def identity(m: Manifest) -> dict[str, Any]:
    """The content-determining fields of a manifest (what the key is a digest of)."""
    ident = {
        "teacher": m.teacher.get("model") or m.teacher.get("id") or m.teacher["name"],
        "weights_sha256": m.teacher["weights_sha256"],
        "dataset_fingerprint": m.dataset["fingerprint"],
        "augment": m.recipe.get("augment", {}),
        "seed": m.seed,
        "repeats": m.repeats,
        "image_size": m.image_size,
        "topk": m.topk,
    }
    # The teacher's precision changes the soft labels. Caches written before it was recorded have
    # none: they keep their key (and so their place in the registry), and no new build matches them.
    if "precision" in m.teacher:
        ident["precision"] = m.teacher["precision"]
    return ident


def cache_key(m: Manifest) -> str:
    text = json.dumps(identity(m), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=KEY_CHARS // 2).hexdigest()
