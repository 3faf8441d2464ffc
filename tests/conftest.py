"""Shared fixtures: a small, real ImageFolder built from scikit-learn's bundled images.

The folder is written once per test process (session scope; each xdist worker builds its own, in
well under a second). It mixes sizes, aspect ratios, file formats and Pillow modes on purpose:
RGB JPEG/PNG/BMP, L, P with transparency, RGBA, CMYK JPEG and 16-bit grey ('I;16') PNG.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from s3_helpers import s3_bucket, s3_server  # noqa: F401  (fixtures: an S3 emulator, a bucket per test)
from sklearn.datasets import load_digits, load_sample_images

from kdcache.data import ImageFolderSource
from kdcache.recipe import AugmentConfig
from kdcache.views import ViewEngine


@pytest.fixture(autouse=True)
def _registry_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may write to the user's real cache directory (~/.cache/kdcache).
    monkeypatch.setenv("KDCACHE_HOME", str(tmp_path_factory.mktemp("kdcache-home")))


# Small views keep rendering fast; 48 px is still large enough for every RandAugment op to act.
TEST_IMAGE_SIZE = 48


@dataclass
class ImageFolderFixture:
    root: Path
    classes: list[str]
    # relative path -> what was written: Pillow mode on disk, (width, height), and for lossless
    # files the exact RGB pixels the loader must produce (None where the codec is lossy).
    files: dict[str, tuple[str, tuple[int, int], np.ndarray | None]] = field(default_factory=dict)

    def source(self) -> ImageFolderSource:
        return ImageFolderSource(self.root)


def _china() -> np.ndarray:
    return load_sample_images().images[0]  # (427, 640, 3) uint8


def _flower() -> np.ndarray:
    return load_sample_images().images[1]


def _crop(img: np.ndarray, top: int, left: int, h: int, w: int, step: int = 1) -> np.ndarray:
    """A crop, optionally subsampled by ``step`` (keeps files small while keeping real content)."""
    return np.ascontiguousarray(img[top : top + h * step : step, left : left + w * step : step])


def build_image_folder(root: Path) -> ImageFolderFixture:
    root.mkdir(parents=True, exist_ok=True)
    china, flower = _china(), _flower()
    digits = load_digits()
    fx = ImageFolderFixture(root=root, classes=["china", "digits", "flower"])

    def save(rel: str, im: Image.Image, expected_rgb: np.ndarray | None, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, **kw)
        fx.files[rel] = (im.mode, im.size, expected_rgb)

    # --- china: RGB JPEG (landscape), RGB PNG (portrait), CMYK JPEG, RGBA PNG (very wide) ---------
    a = _crop(china, 40, 60, 100, 160, step=2)  # 160x100
    save("china/c0_landscape.jpg", Image.fromarray(a), None, quality=90)
    a = _crop(china, 0, 300, 150, 60, step=2)  # 60x150
    save("china/c1_portrait.png", Image.fromarray(a), a)
    a = _crop(china, 100, 100, 90, 90, step=3)  # 90x90
    save("china/c2_cmyk.jpg", Image.fromarray(a).convert("CMYK"), a, quality=95)  # expected: approx only
    a = _crop(china, 200, 0, 40, 200, step=3)  # 200x40 (aspect 5: RandomResizedCrop often falls back)
    rgba = np.dstack([a, np.linspace(0, 255, a.shape[1], dtype=np.uint8)[None, :].repeat(a.shape[0], 0)])
    save("china/c3_rgba.png", Image.fromarray(rgba, mode="RGBA"), a)

    # --- flower: RGB JPEG, P with transparency, L, RGB BMP, a nested sub-folder ----------------------
    a = _crop(flower, 50, 100, 120, 90, step=2)  # 90x120
    save("flower/f0.jpg", Image.fromarray(a), None, quality=90)
    a = _crop(flower, 100, 200, 64, 96, step=2)  # 96x64
    pal = Image.fromarray(a).quantize(colors=32, method=Image.Quantize.MEDIANCUT)
    pal.info["transparency"] = 0
    expected = np.asarray(pal.convert("RGB"))
    save("flower/f1_palette.png", pal, expected, transparency=0)
    a = _crop(flower, 0, 0, 70, 110, step=3)  # 110x70 grey
    grey = np.asarray(Image.fromarray(a).convert("L"))
    save("flower/f2_grey.png", Image.fromarray(grey, mode="L"), np.repeat(grey[..., None], 3, axis=2))
    a = _crop(flower, 250, 300, 50, 50, step=2)  # 50x50
    save("flower/f3.bmp", Image.fromarray(a), a)
    a = _crop(flower, 120, 400, 80, 40, step=2)  # 40x80
    save("flower/nested/f4.png", Image.fromarray(a), a)

    # --- digits: 8x8 glyphs (0..16) upscaled; L PNGs and one 16-bit PNG -------------------------------
    for k, (idx, scale) in enumerate([(0, 6), (1, 8), (2, 5), (3, 7)]):
        glyph = (digits.images[idx] * (255 / 16)).round().astype(np.uint8)
        big = np.kron(glyph, np.ones((scale, scale), dtype=np.uint8))
        if k == 3:
            # 16-bit grey: the loader must scale by 1/256 (Pillow's own 'I;16' -> 'L' would clip).
            wide = np.minimum(big.astype(np.uint32) * 257 + 3, 65535).astype(np.uint16)
            im16 = Image.fromarray(wide)
            assert im16.mode == "I;16"
            exp8 = (wide >> 8).astype(np.uint8)
            save("digits/d3_16bit.png", im16, np.repeat(exp8[..., None], 3, axis=2))
        else:
            save(f"digits/d{k}.png", Image.fromarray(big, mode="L"), np.repeat(big[..., None], 3, axis=2))

    # Ignored by the loader: hidden files and non-image extensions.
    (root / "digits" / ".hidden.png").write_bytes((root / "digits" / "d0.png").read_bytes())
    (root / "flower" / "notes.txt").write_text("not an image\n")
    return fx


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> ImageFolderFixture:
    return build_image_folder(tmp_path_factory.mktemp("imagefolder") / "train")


@pytest.fixture
def fresh_image_folder(image_folder: ImageFolderFixture, tmp_path: Path) -> ImageFolderFixture:
    """A private, mutable copy of the session folder (for rename / rewrite tests)."""
    dst = tmp_path / "train"
    shutil.copytree(image_folder.root, dst)
    return ImageFolderFixture(root=dst, classes=list(image_folder.classes), files=dict(image_folder.files))


def augment_config(**changes) -> AugmentConfig:
    """The seed recipe's augmentation at the small test size, with optional overrides."""
    changes.setdefault("image_size", TEST_IMAGE_SIZE)
    return AugmentConfig(**changes)


@pytest.fixture(scope="session")
def make_engine(image_folder: ImageFolderFixture) -> Callable[..., ViewEngine]:
    """make_engine(seed=0, **augment_changes): a ViewEngine over the session folder at the test size."""

    def make(seed: int = 0, **changes) -> ViewEngine:
        return ViewEngine(image_folder.source(), augment_config(**changes), seed)

    return make
