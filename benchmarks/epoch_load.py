"""Cache store benchmark: bytes per view on disk and seconds to load one epoch into memory.

Synthetic but realistic content for an ImageNet-sized epoch (default 1,281,167 samples -> 1,281,166
views, top-10 of 1000 classes): slots from the real epoch plan, view params from the real samplers
(a pool of pairs sampled with kdcache.views.sampling, resampled per pair), a synthetic teacher whose
logits peak at both mixed labels, random 8-byte digests. Writes both backends, then times
``open_cache(path).load_epoch(0)`` with a warm page cache (best of 3).

    .venv/bin/python benchmarks/epoch_load.py [--views N] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def machine_info() -> str:
    import numcodecs
    import zarr

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}, "
        f"zarr {zarr.__version__}, numcodecs {numcodecs.__version__}"
    )


def real_param_pool(pairs: int, n_ops: int, size: int, seed: int = 0) -> np.ndarray:
    """(pairs, 2, width) records drawn with the real samplers of the seed recipe."""
    from kdcache.recipe import AugmentConfig
    from kdcache.views import params as P
    from kdcache.views.sampling import image_generator, mix_generator, ra_spec, sample_image_params, sample_mix_params

    cfg = AugmentConfig(image_size=size)
    spec = ra_spec(cfg)
    assert spec is not None and spec.num_layers == n_ops
    g = np.random.default_rng(seed)
    sizes = [(500, 375), (500, 333), (375, 500), (500, 400), (333, 500), (640, 480), (500, 500)]
    pool = np.zeros((pairs, 2, P.record_width(n_ops)), np.uint16)
    for p in range(pairs):
        mix = sample_mix_params(mix_generator(seed, 0, p), size, cfg)
        for j in range(2):
            w, h = sizes[int(g.integers(len(sizes)))]
            img = sample_image_params(image_generator(seed, 0, 2 * p + j, 0), w, h, cfg, spec)
            pool[p, j] = P.encode(P.ViewParams(img, mix), n_ops)
    return pool


def lambdas(records: np.ndarray, n_ops: int, size: int) -> np.ndarray:
    from kdcache.views import params as P

    t = 5 + 2 * n_ops
    mode = (records[:, 4] >> 2) & 3
    box = records[:, t + 1 : t + 5].astype(np.float64)
    cut = 1 - (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]) / float(size * size)
    return np.where(mode == P.MixMode.MIXUP, records[:, t] / P.LAMBDA_SCALE, np.where(mode == 2, cut, 1.0))


def field_bytes(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for field_dir in (root / "e00000").iterdir():
        if field_dir.is_dir():
            out[field_dir.name] = sum(p.stat().st_size for p in field_dir.rglob("*") if p.is_file())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=1281167, help="dataset size (views per epoch = even part)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--unit-size", type=int, default=10240)
    ap.add_argument("--param-pool", type=int, default=8192, help="pairs sampled with the real samplers")
    ap.add_argument("--out", type=Path, help="where to write (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the caches")
    args = ap.parse_args()

    from kdcache.teacher_cache import create_or_open_writer, num_units, open_cache
    from kdcache.teacher_cache.store.fields import UnitData
    from kdcache.teacher_cache.store.units import unit_slots
    from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_topk
    from kdcache.views.plan import make_epoch_plan

    print(f"machine: {machine_info()}")
    out = args.out or Path(tempfile.mkdtemp(prefix="kdcache-bench-"))
    n_ops, size = 2, 224
    t0 = time.perf_counter()
    pool = real_param_pool(args.param_pool, n_ops, size)
    print(f"sampled {2 * args.param_pool} view params with the real samplers in {time.perf_counter() - t0:.1f} s")

    base = synthetic_manifest(
        num_samples=args.views, num_classes=args.classes, topk=args.topk, unit_size=args.unit_size, epochs=1
    )
    writers = {b: create_or_open_writer(out / b, base.replace(backend=b)) for b in ("zarr", "wds")}
    plan = make_epoch_plan(base.seed, 0, args.views, base.repeats)
    g = np.random.default_rng(1)
    write_s = dict.fromkeys(writers, 0.0)
    t0 = time.perf_counter()
    for u in range(num_units(base)):
        a, b = unit_slots(base, u)
        ids = plan.sample_ids[a:b].astype(np.int32)
        records = pool[g.integers(0, len(pool), (b - a) // 2)].reshape(b - a, -1)
        labels = ids.astype(np.int64) * args.classes // args.views
        partner = np.ascontiguousarray(labels.reshape(-1, 2)[:, ::-1]).reshape(-1)
        lp, cls = synthetic_topk(g, labels, partner, lambdas(records, n_ops, size), base, 11.0, 1.5)
        data = UnitData(
            sample_id=ids,
            repeat=plan.repeats[a:b].astype(np.uint8),
            params=records,
            digest=g.integers(0, 2**64, b - a, dtype=np.uint64),
            topk_logprob=lp,
            topk_class=cls,
        )
        for name, w in writers.items():
            ts = time.perf_counter()
            w.write_unit(0, u, data)
            write_s[name] += time.perf_counter() - ts
    for w in writers.values():
        w.finalize()
    print(f"generated and wrote {num_units(base)} units of {args.unit_size} views in {time.perf_counter() - t0:.1f} s")

    views = base.num_slots
    print(f"\n{views:,} views/epoch, top-{args.topk} of {args.classes} classes, record width {base.record_width}")
    blocks = {}
    for name in writers:
        reader = open_cache(out / name)
        reader.load_epoch(0)  # warm the page cache
        times = []
        for _ in range(3):
            ts = time.perf_counter()
            blocks[name] = open_cache(out / name).load_epoch(0)
            times.append(time.perf_counter() - ts)
        size_b = reader.bytes_on_disk()
        print(
            f"{name:5s} {size_b / views:6.1f} B/view on disk ({size_b / 1e6:.1f} MB), "
            f"load epoch {min(times):.2f} s (best of 3; all {', '.join(f'{t:.2f}' for t in times)}), "
            f"write {write_s[name]:.1f} s"
        )
        if name == "zarr":
            per = field_bytes(out / name)
            print("      per field: " + ", ".join(f"{k} {v / views:.2f}" for k, v in sorted(per.items())) + " B/view")
    assert blocks["zarr"].equals(blocks["wds"]), "backends disagree"
    in_memory = sum(a.nbytes for a in blocks["zarr"].arrays().values())
    print(f"in memory {in_memory / views:.1f} B/view ({in_memory / 1e6:.1f} MB); both backends load identical arrays")
    if not args.keep and args.out is None:
        shutil.rmtree(out)
    elif args.keep:
        print(f"caches kept under {out}")


if __name__ == "__main__":
    main()
