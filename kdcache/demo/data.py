"""scikit-learn's digits (1,797 real 8x8 handwritten digits, shipped inside the package) as an ImageFolder.

Layout: ``root/train/<digit>/<index>.png`` and ``root/val/<digit>/<index>.png``, folders "0".."9",
``<index>`` the image's row in ``load_digits()`` (zero-padded to 4 digits).

- Pixels: the 0..16 grey levels are scaled to 0..255 (``round(v * 255 / 16)``), upscaled 8 -> 32 px
  with Pillow's bilinear filter, then stored as RGB (three equal channels) PNG: a lossless file, so
  the images the teacher and the student read are exactly these pixels.
- Split (fixed, no randomness): every 6th image, rows 0, 6, 12, ..., goes to val (300 images), the
  other 1,497 to train. The rows of ``load_digits`` run through the digits in turn, so the split is
  balanced (25..33 val images per digit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
VAL_EVERY = 6  # rows i with i % VAL_EVERY == 0 go to val


@dataclass(frozen=True)
class DigitsFolders:
    train: Path
    val: Path
    num_train: int
    num_val: int


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 (1797, 8, 8) in 0..16, targets int (1797,)), from the copy inside scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # scikit-learn is a dev extra; `make demo` installs it
        raise RuntimeError(
            "the demo needs scikit-learn for its bundled digits: pip install scikit-learn (or kdcache[dev])"
        ) from e
    d = load_digits()
    return d.images, d.target


def digit_image(pixels: np.ndarray, size: int = IMAGE_SIZE) -> Image.Image:
    """One 8x8 digit (0..16) -> RGB ``size`` x ``size`` Pillow image (bilinear upscale)."""
    grey = np.rint(np.asarray(pixels, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")


def is_val(index: int) -> bool:
    return index % VAL_EVERY == 0


def write_digits(root: str | Path, size: int = IMAGE_SIZE, limit_train: int | None = None) -> DigitsFolders:
    """Write the train/val ImageFolders under ``root``. Idempotent: files already there are kept, and
    digit files of an earlier call that the split no longer holds (another ``limit_train``) are removed.

    ``limit_train``: keep only the first N training images (in row order), for quick runs and tests.
    """
    root = Path(root)
    images, targets = load_digits_arrays()
    train, val = root / "train", root / "val"
    n_train = n_val = 0
    wanted: set[Path] = set()
    for i, (pixels, target) in enumerate(zip(images, targets, strict=True)):
        if is_val(i):
            folder = val
            n_val += 1
        else:
            if limit_train is not None and n_train >= limit_train:
                continue
            folder = train
            n_train += 1
        path = folder / str(int(target)) / f"{i:04d}.png"
        wanted.add(path)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        digit_image(pixels, size).save(tmp, format="PNG")
        tmp.replace(path)
    for stale in sorted({*train.glob("[0-9]/[0-9][0-9][0-9][0-9].png"), *val.glob("[0-9]/[0-9][0-9][0-9][0-9].png")}):
        if stale not in wanted:
            stale.unlink()
    return DigitsFolders(train, val, n_train, n_val)
