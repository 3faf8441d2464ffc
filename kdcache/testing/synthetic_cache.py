"""Synthetic caches with realistic statistics, for tests and benchmarks (no teacher, no images).

Slots follow the real epoch plan; params are valid records with the seed recipe's distributions
(RandomResizedCrop on ImageNet-like sizes, 2 RandAugment layers at m7 mstd0.5, Mixup/CutMix per
pair); soft labels come from a synthetic teacher whose logits peak at both mixed labels.
"""

from __future__ import annotations

import numpy as np

from kdcache.teacher_cache.store.fields import UnitData, class_dtype
from kdcache.teacher_cache.store.manifest import Manifest, format_version_for, utc_now_iso
from kdcache.teacher_cache.store.tail import quantize_tail
from kdcache.teacher_cache.store.units import unit_slots
from kdcache.version import __version__
from kdcache.views import params as P
from kdcache.views.plan import make_epoch_plan, num_slots_for


def synthetic_manifest(
    *,
    backend: str = "zarr",
    num_samples: int = 1000,
    num_classes: int = 10,
    topk: int = 3,
    unit_size: int = 64,
    epochs: int = 2,
    n_ops: int = 2,
    repeats: int = 3,
    image_size: int = 224,
    seed: int = 0,
    tail_classes: int = 0,
) -> Manifest:
    """A version 1 manifest, or version 2 with ``tail_classes`` > 0."""
    return Manifest(
        format_version=format_version_for(tail_classes),
        tail_classes=tail_classes,
        kdcache_version=__version__,
        backend=backend,
        teacher={
            "name": "synthetic",
            "weights_sha256": "0" * 64,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "input_size": [3, image_size, image_size],
            "interpolation": "bicubic",
            "num_classes": num_classes,
        },
        recipe={"name": "synthetic", "augment": {"image_size": image_size, "repeats": repeats}},
        seed=seed,
        repeats=repeats,
        image_size=image_size,
        topk=topk,
        num_classes=num_classes,
        class_names=tuple(f"class_{c:05d}" for c in range(num_classes)),
        dataset={"fingerprint": "synthetic", "num_samples": num_samples, "kind": "synthetic"},
        epochs_planned=epochs,
        num_slots=num_slots_for(num_samples),
        unit_size=unit_size,
        record_width=P.record_width(n_ops),
        created=utc_now_iso(),
        library_versions={"numpy": np.__version__},
    )


def synthetic_unit(manifest: Manifest, epoch: int, unit: int, *, peak: float = 11.0, noise: float = 1.5) -> UnitData:
    """Deterministic content of one unit: a pure function of (manifest seed, epoch, unit)."""
    a, b = unit_slots(manifest, unit)
    g = np.random.default_rng([manifest.seed, epoch, unit, 0x5EED])
    plan = make_epoch_plan(manifest.seed, epoch, manifest.dataset["num_samples"], manifest.repeats)
    ids = plan.sample_ids[a:b].astype(np.int32)
    n_ops = P.n_ops_for_width(manifest.record_width)
    records, lam = synthetic_records(g, b - a, n_ops, manifest.image_size)
    labels = (ids.astype(np.int64) * manifest.num_classes) // manifest.dataset["num_samples"]
    lp, cls = synthetic_topk(
        g, labels, np.ascontiguousarray(labels.reshape(-1, 2)[:, ::-1]).reshape(-1), lam, manifest, peak, noise
    )
    return UnitData(
        sample_id=ids,
        repeat=plan.repeats[a:b].astype(np.uint8),
        params=records,
        digest=g.integers(0, 2**64, size=b - a, dtype=np.uint64),
        topk_logprob=lp,
        topk_class=cls,
    )


def synthetic_records(g: np.random.Generator, n: int, n_ops: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(records uint16 (n, width), lambda float (n,)) for n views = n/2 mixing pairs."""
    rec = np.zeros((n, P.record_width(n_ops)), np.uint16)
    w = g.choice([500, 500, 500, 375, 333, 640], n)
    h = g.choice([375, 333, 500, 500, 500, 480], n)
    area = w * h * g.uniform(0.08, 1.0, n)
    ratio = np.exp(g.uniform(np.log(3 / 4), np.log(4 / 3), n))
    cw = np.clip(np.round(np.sqrt(area * ratio)), 1, w).astype(np.int64)
    ch = np.clip(np.round(np.sqrt(area / ratio)), 1, h).astype(np.int64)
    rec[:, 0] = g.integers(0, h - ch + 1)
    rec[:, 1] = g.integers(0, w - cw + 1)
    rec[:, 2], rec[:, 3] = ch, cw
    pairs = n // 2
    mode = np.repeat(np.where(g.random(pairs) < 0.5, P.MixMode.MIXUP, P.MixMode.CUTMIX), 2)
    rec[:, 4] = (g.random(n) < 0.5) | (g.random(n) < 0.5) << 1 | mode << 2
    for k in range(n_ops):
        code = g.integers(1, len(P.OP_NAMES), n)
        applied = g.random(n) < 0.5
        negate = g.random(n) < 0.5
        rec[:, 5 + 2 * k] = code | applied << 6 | negate << 7 | (g.random(n) < 0.5) << 8
        mag = np.clip(g.normal(7.0, 0.5, n), 0, 10)
        rec[:, 6 + 2 * k] = np.round(mag * P.MAGNITUDE_SCALE)
    t = 5 + 2 * n_ops
    lam_mix = np.repeat(np.round(g.beta(0.2, 0.2, pairs) * P.LAMBDA_SCALE), 2)
    cut = (size * np.sqrt(1 - g.beta(1.0, 1.0, pairs))).astype(np.int64)
    cy, cx = g.integers(0, size, (2, pairs))
    box = np.stack([cy - cut // 2, cy + cut // 2, cx - cut // 2, cx + cut // 2], axis=1).clip(0, size)
    box = np.repeat(box, 2, axis=0)
    is_mix, is_cut = mode == P.MixMode.MIXUP, mode == P.MixMode.CUTMIX
    rec[:, t] = np.where(is_mix, lam_mix, 0)
    rec[:, t + 1 : t + 5] = np.where(is_cut[:, None], box, 0)
    area_cut = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]) / float(size * size)
    lam = np.where(is_mix, lam_mix / P.LAMBDA_SCALE, 1.0 - area_cut)
    return rec, lam


def synthetic_topk(
    g: np.random.Generator,
    label_a: np.ndarray,
    label_b: np.ndarray,
    lam: np.ndarray,
    manifest: Manifest,
    peak: float,
    noise: float,
    rows_per_step: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a teacher whose logits are noise + peak*lam at label_a + peak*(1-lam) at label_b."""
    import torch

    n, c, k = label_a.shape[0], manifest.num_classes, manifest.label_width
    lp_out = np.empty((n, k), np.float16)
    cls_out = np.empty((n, k), class_dtype(c))
    tg = torch.Generator().manual_seed(int(g.integers(0, 2**63)))
    for s in range(0, n, rows_per_step):
        e = min(s + rows_per_step, n)
        logits = torch.randn(e - s, c, generator=tg) * noise
        rows = torch.arange(e - s)
        la = torch.from_numpy(lam[s:e]).float()
        logits[rows, torch.from_numpy(label_a[s:e])] += peak * la
        logits[rows, torch.from_numpy(label_b[s:e])] += peak * (1 - la)
        # torch.topk, not logits_to_topk: 8x faster on CPU, and exact ties do not occur in random logits.
        lp, cls = torch.log_softmax(logits, -1).topk(k, dim=-1)
        lp_out[s:e], cls_out[s:e] = quantize_tail(lp, manifest.topk).numpy(), cls.numpy()
    return lp_out, cls_out
