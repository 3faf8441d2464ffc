"""Synthetic ImageNet-like JPEGs in an ImageFolder, for benchmarks (no download).

Sizes follow ImageNet's (333-800 px, mostly 500x375); content is a random crop of a real photo
(scikit-learn's sample images, when scikit-learn is installed) re-coloured with sensor-like noise, or
multi-scale smoothed noise with a colour gradient, so JPEG decode and resize cost what real photos cost.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

# (width, height, weight): ImageNet-like shapes, landscape most common.
SHAPES = (
    (500, 375, 8),
    (375, 500, 3),
    (500, 333, 4),
    (333, 500, 1),
    (500, 400, 2),
    (500, 500, 2),
    (400, 300, 1),
    (640, 480, 1),
    (800, 600, 1),
)


def _base_photos() -> list[Image.Image]:
    """scikit-learn's sample photos, or none without scikit-learn (then every image is noise)."""
    from kdcache.testing.photos import sklearn_photos

    try:
        return [Image.fromarray(a) for a in sklearn_photos().values()]
    except ImportError:
        return []


def _smooth_noise(g: np.random.Generator, w: int, h: int) -> Image.Image:
    """Multi-scale smoothed noise + a linear colour gradient + fine grain."""
    acc = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 2.2), (12, 1.2), (48, 0.6)):
        lo = g.normal(0, 1, (cells, max(1, round(cells * w / h)), 3)) * 40 + 128
        up = Image.fromarray(lo.clip(0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        acc += (np.asarray(up, np.float32) - 128) * amp
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = g.uniform(0, 2 * np.pi)
    acc += (np.cos(a) * xx / w + np.sin(a) * yy / h)[..., None] * g.uniform(-80, 80, 3).astype(np.float32)
    acc += 128 + g.normal(0, g.uniform(4, 10), (h, w, 3)).astype(np.float32)
    return Image.fromarray(acc.clip(0, 255).astype(np.uint8))


def _photo_crop(g: np.random.Generator, base: Image.Image, w: int, h: int) -> Image.Image:
    """A random crop of a real photo, resized to (w, h), re-coloured, with sensor-like noise."""
    bw, bh = base.size
    s = g.uniform(0.35, 1.0)
    cw, ch = int(bw * s), int(bh * s)
    if cw / ch > w / h:
        cw = int(ch * w / h)
    else:
        ch = int(cw * h / w)
    x, y = int(g.integers(0, bw - cw + 1)), int(g.integers(0, bh - ch + 1))
    im = base.resize((w, h), Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))
    if g.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(im, np.float32) * g.uniform(0.7, 1.2, 3).astype(np.float32)
    arr += g.normal(0, g.uniform(4, 10), (h, w, 3)).astype(np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def make_imagefolder(root: Path, n: int, num_classes: int, seed: int = 0) -> dict:
    """Write n JPEGs (quality 90) into ``root/class_<c>/``, image i in class i mod ``num_classes``.

    Returns size statistics: mean KB per file, mean megapixels, whether real photos were used."""
    g = np.random.default_rng(seed)
    photos = _base_photos()
    weights = np.array([s[2] for s in SHAPES], float)
    nbytes, pixels = [], []
    for i in range(n):
        w, h, _ = SHAPES[int(g.choice(len(SHAPES), p=weights / weights.sum()))]
        if photos and g.random() < 0.6:
            im = _photo_crop(g, photos[int(g.integers(len(photos)))], w, h)
        else:
            im = _smooth_noise(g, w, h)
        d = root / f"class_{i % num_classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        (d / f"img_{i:06d}.jpg").write_bytes(buf.getvalue())
        nbytes.append(buf.tell())
        pixels.append(w * h)
    return {"mean_kb": np.mean(nbytes) / 1e3, "mean_mpix": np.mean(pixels) / 1e6, "photo_share": bool(photos)}


def bench_images(data: Path | None, tmp: Path, n: int, num_classes: int) -> Path:
    """``data`` if given, else ``n`` synthetic JPEGs written under ``tmp/train``; prints a 'data' line
    either way (benchmarks' reports start with it)."""
    if data is not None:
        print(f"data    : {data}")
        return data
    root = tmp / "train"
    t0 = time.perf_counter()
    st = make_imagefolder(root, n, num_classes)
    print(
        f"data    : {n} synthetic JPEGs q90 in {num_classes} classes, "
        f"mean {st['mean_mpix']:.3f} Mpix, {st['mean_kb']:.0f} KB ({time.perf_counter() - t0:.1f} s to write)"
    )
    return root
