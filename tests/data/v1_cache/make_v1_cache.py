"""Write the format 1 caches in this folder with the code BEFORE format 2 (kdcache at commit 16831d6):

    git worktree add /tmp/old16831 16831d6
    cd tests/data/v1_cache && PYTHONPATH=/tmp/old16831 python make_v1_cache.py

Two synthetic caches of the same content, zarr/ and wds/ (21 samples -> 20 slots, units of 8, 2 epochs,
10 classes, top-3), and hashes.json: each one's content hash as the old code computes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kdcache.teacher_cache import content_hash, create_or_open_writer, num_units, open_cache
from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_unit

HERE = Path(__file__).resolve().parent
CREATED = "2026-11-29T00:00:00+00:00"  # fixed, so a rewrite by newer code can be compared byte for byte


def main() -> None:
    hashes = {}
    for backend in ("zarr", "wds"):
        m = synthetic_manifest(backend=backend, num_samples=21, unit_size=8, epochs=2, image_size=32)
        m = m.replace(created=CREATED)
        path = HERE / backend
        shutil.rmtree(path, ignore_errors=True)
        w = create_or_open_writer(path, m)
        for e in range(m.epochs_planned):
            for u in range(num_units(m)):
                w.write_unit(e, u, synthetic_unit(m, e, u))
        w.finalize()
        hashes[backend] = content_hash(open_cache(path))
    (HERE / "hashes.json").write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
