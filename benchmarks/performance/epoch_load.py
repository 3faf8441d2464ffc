"""Cache store benchmark: bytes per view on disk and seconds to load one epoch into memory.

Synthetic but realistic content for an ImageNet-sized epoch (default 1,281,167 samples -> 1,281,166
views, top-10 of 1000 classes): slots from the real epoch plan, view params from the real samplers
(a pool of pairs sampled with kdcache.views.sampling, resampled per pair), a synthetic teacher whose
logits peak at both mixed labels, random 8-byte digests. Writes both backends, then times
``open_cache(path).load_epoch(0)`` with a warm page cache (best of 3).

With ``--tail-classes M`` (M > 0) it also writes a format version 2 cache of the same views in both
backends (the same top-k plus a tail of M classes with 4-bit codes, store/labels.py) and reports bytes
per view and load time of version 1 and version 2 side by side, plus the time the tail decode alone
(``decode_labels``) takes within the version 2 load. Version 1's labels are then the first k columns of
version 2's, from one torch.topk of width k+M; that orders classes whose float32 log-probs tie exactly
differently from a top-k alone, so a few rows' class order differs from a run without the option.

    .venv/bin/python benchmarks/performance/epoch_load.py [--views N] [--tail-classes M] [--out DIR] [--keep]
    .venv/bin/python benchmarks/performance/epoch_load.py --tail-classes 10   # v1 and v2 (top-10 + 10), ImageNet size
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
    ap.add_argument(
        "--tail-classes", type=int, default=0, help="also write and time a format 2 cache with this many tail "
        "classes (0: version 1 only)",
    )  # fmt: skip
    ap.add_argument("--unit-size", type=int, default=10240)
    ap.add_argument("--param-pool", type=int, default=8192, help="pairs sampled with the real samplers")
    ap.add_argument("--out", type=Path, help="where to write (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the caches")
    args = ap.parse_args()

    if not 0 <= args.tail_classes <= args.classes - args.topk:
        ap.error(f"--tail-classes must be in 0..{args.classes - args.topk} (classes - topk)")

    from kdcache.teacher_cache import create_or_open_writer, num_units, open_cache
    from kdcache.teacher_cache.store.fields import UnitData
    from kdcache.teacher_cache.store.labels import decode_labels, encode_labels
    from kdcache.teacher_cache.store.units import unit_slots
    from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_topk
    from kdcache.views.plan import make_epoch_plan

    print(f"machine: {machine_info()}")
    out = args.out or Path(tempfile.mkdtemp(prefix="kdcache-bench-"))
    n_ops, size = 2, 224
    t0 = time.perf_counter()
    pool = real_param_pool(args.param_pool, n_ops, size)
    print(f"sampled {2 * args.param_pool} view params with the real samplers in {time.perf_counter() - t0:.1f} s")

    k, m = args.topk, args.tail_classes
    kw = dict(num_samples=args.views, num_classes=args.classes, topk=k, unit_size=args.unit_size, epochs=1)
    base = synthetic_manifest(**kw)
    # Cache name -> manifest: version 1 as "zarr"/"wds" (the names without the option), version 2 as "*-v2".
    manifests = {b: base.replace(backend=b) for b in ("zarr", "wds")}
    if m:
        tail = synthetic_manifest(**kw, tail_classes=m)
        manifests.update({f"{b}-v2": tail.replace(backend=b) for b in ("zarr", "wds")})
    # The labels come from the widest manifest; version 1 keeps their first k columns, which are the same
    # float16 values whatever the width (quantize_tail leaves columns < k as they are).
    widest = tail if m else base
    writers = {name: create_or_open_writer(out / name, man) for name, man in manifests.items()}
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
        lp, cls = synthetic_topk(g, labels, partner, lambdas(records, n_ops, size), widest, 11.0, 1.5)
        common = dict(
            sample_id=ids,
            repeat=plan.repeats[a:b].astype(np.uint8),
            params=records,
            digest=g.integers(0, 2**64, b - a, dtype=np.uint64),
        )
        data = {
            1: UnitData(
                **common, topk_logprob=np.ascontiguousarray(lp[:, :k]), topk_class=np.ascontiguousarray(cls[:, :k])
            ),
            2: UnitData(**common, topk_logprob=lp, topk_class=cls),
        }
        for name, w in writers.items():
            ts = time.perf_counter()
            w.write_unit(0, u, data[w.manifest.format_version])
            write_s[name] += time.perf_counter() - ts
    for w in writers.values():
        w.finalize()
    print(f"generated and wrote {num_units(base)} units of {args.unit_size} views in {time.perf_counter() - t0:.1f} s")

    views = base.num_slots
    tail_note = f"; format 2 adds a tail of {m} classes (4-bit codes)" if m else ""
    print(f"\n{views:,} views/epoch, top-{k} of {args.classes} classes{tail_note}, record width {base.record_width}")
    blocks, best = {}, {}
    for name in writers:
        reader = open_cache(out / name)
        reader.load_epoch(0)  # warm the page cache
        times = []
        for _ in range(3):
            ts = time.perf_counter()
            blocks[name] = open_cache(out / name).load_epoch(0)
            times.append(time.perf_counter() - ts)
        best[name] = min(times)
        size_b = reader.bytes_on_disk()
        version = reader.manifest.format_version
        print(
            f"{name:8s} v{version} {size_b / views:6.1f} B/view on disk ({size_b / 1e6:.1f} MB), "
            f"load epoch {best[name]:.2f} s (best of 3; all {', '.join(f'{t:.2f}' for t in times)}), "
            f"write {write_s[name]:.1f} s"
        )
        if name.startswith("zarr"):
            per = field_bytes(out / name)
            print("      per field: " + ", ".join(f"{f} {v / views:.2f}" for f, v in sorted(per.items())) + " B/view")
    assert blocks["zarr"].equals(blocks["wds"]), "backends disagree"
    in_memory = sum(a.nbytes for a in blocks["zarr"].arrays().values())
    print(f"in memory {in_memory / views:.1f} B/view ({in_memory / 1e6:.1f} MB); both backends load identical arrays")
    if m:
        v2 = blocks["zarr-v2"]
        assert v2.equals(blocks["wds-v2"]), "format 2: backends disagree"
        assert np.array_equal(v2.topk_logprob[:, :k], blocks["zarr"].topk_logprob), "format 2 changed the top-k"
        assert np.array_equal(v2.topk_class[:, :k], blocks["zarr"].topk_class), "format 2 changed the top-k"
        in_memory2 = sum(a.nbytes for a in v2.arrays().values())
        stored = encode_labels(v2.topk_logprob, v2.topk_class, k)
        times = []
        for _ in range(3):
            ts = time.perf_counter()
            decode_labels(stored)
            times.append(time.perf_counter() - ts)
        print(
            f"format 2 in memory {in_memory2 / views:.1f} B/view ({in_memory2 / 1e6:.1f} MB, top-{k + m} rows); "
            f"both backends agree and its top-{k} equals version 1's"
        )
        print(f"format 2 tail decode (decode_labels over the epoch) {min(times):.3f} s (best of 3)")
        for b in ("zarr", "wds"):
            print(f"{b:5s} load v2 / v1 {best[f'{b}-v2'] / best[b]:.2f}x, {best[f'{b}-v2'] - best[b]:+.2f} s")
    if not args.keep and args.out is None:
        shutil.rmtree(out)
    elif args.keep:
        print(f"caches kept under {out}")


if __name__ == "__main__":
    main()
