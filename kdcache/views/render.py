"""Deterministic rendering: (image, params) -> uint8 HWC pixels. No randomness here."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from kdcache.views.params import ImageParams, MixMode, MixParams
from kdcache.views.randaug import RASpec, apply_ops


def render_image(img: Image.Image, p: ImageParams, size: int, spec: RASpec | None) -> np.ndarray:
    """Crop + resize (bilinear/bicubic), flip, RandAugment; returns uint8 (size, size, 3)."""
    resample = Image.Resampling.BICUBIC if p.bicubic else Image.Resampling.BILINEAR
    if p.left < 0 or p.top < 0 or p.left + p.width > img.width or p.top + p.height > img.height:
        # Image.crop would silently pad with black; a crop outside the image is a bad (replayed) record.
        raise ValueError(
            f"crop (top={p.top}, left={p.left}, h={p.height}, w={p.width}) exceeds the {img.width}x{img.height} image"
        )
    # Crop, then resize: torchvision's resized_crop on PIL (what timm's RandomResizedCrop calls).
    # Not resize(box=...): that lets the filter read source pixels outside the box at the edges.
    out = img.crop((p.left, p.top, p.left + p.width, p.top + p.height)).resize((size, size), resample)
    if p.hflip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if spec is not None and p.ops:
        out = apply_ops(out, p.ops, spec)
    arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"rendered view has shape {arr.shape}, expected ({size}, {size}, 3)")
    return arr


def mix_pair(a: np.ndarray, b: np.ndarray, mix: MixParams) -> tuple[np.ndarray, np.ndarray]:
    """The pair's two outputs: mix(a, b, lam) and mix(b, a, lam), as timm's 'pair' mixup mode.

    Mixup blends in float32 and rounds to uint8 (as timm's FastCollateMixup does), so the teacher
    and the student both see exactly these uint8 pixels.
    """
    if mix.mode == MixMode.NONE:
        return a, b
    if mix.mode == MixMode.CUTMIX:
        y0, y1, x0, x1 = mix.box
        oa, ob = a.copy(), b.copy()
        oa[y0:y1, x0:x1] = b[y0:y1, x0:x1]
        ob[y0:y1, x0:x1] = a[y0:y1, x0:x1]
        return oa, ob
    lam = np.float32(mix.lam)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    oa = np.rint(fa * lam + fb * (np.float32(1) - lam)).astype(np.uint8)
    ob = np.rint(fb * lam + fa * (np.float32(1) - lam)).astype(np.uint8)
    return oa, ob


def mix_pair_into(a: np.ndarray, b: np.ndarray, mix: MixParams, out: np.ndarray) -> None:
    """:func:`mix_pair`, written into ``out`` (uint8 (2, S, S, 3)) without temporaries per output.

    The same float32 operations in the same order as :func:`mix_pair`, so the pixels are identical.
    """
    oa, ob = out[0], out[1]
    if mix.mode == MixMode.NONE:
        oa[...], ob[...] = a, b
        return
    if mix.mode == MixMode.CUTMIX:
        y0, y1, x0, x1 = mix.box
        oa[...], ob[...] = a, b
        oa[y0:y1, x0:x1] = b[y0:y1, x0:x1]
        ob[y0:y1, x0:x1] = a[y0:y1, x0:x1]
        return
    lam = np.float32(mix.lam)
    rest = np.float32(1) - lam
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    t0, t1 = np.multiply(fa, lam), np.multiply(fb, rest)
    oa[...] = np.rint(np.add(t0, t1, out=t0), out=t0)  # float -> uint8 cast, as astype(np.uint8)
    np.multiply(fb, lam, out=t0)
    np.multiply(fa, rest, out=t1)
    ob[...] = np.rint(np.add(t0, t1, out=t0), out=t0)


def digest(view: np.ndarray) -> int:
    """8-byte blake2b of the uint8 HWC pixels, as an unsigned 64-bit integer."""
    if view.dtype != np.uint8:
        raise TypeError(f"digest expects uint8 pixels, got {view.dtype}")
    h = hashlib.blake2b(np.ascontiguousarray(view).data, digest_size=8)
    return int.from_bytes(h.digest(), "little")
