"""Real photos for benchmarks and studies: the sample images scikit-learn and scikit-image ship.

scikit-learn's two (``china``, ``flower``) come with the dev extra; scikit-image's sixteen need
``pip install scikit-image``. Both are imported inside the functions, so importing this module needs
neither. Nothing is downloaded: these images are inside the installed packages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

# Photo set A (what a study fits or trains on) and B (held out): photo -> the WordNet id of the
# nearest ImageNet-1k class, as a folder name (the labels play no part in fidelity figures).
SET_A: dict[str, str] = {
    "chelsea": "n02124075",  # Egyptian cat
    "rocket": "n04008634",  # projectile, missile
    "coins": "n03388043",  # fountain (no coin class)
    "hubble_deep_field": "n03956157",  # planetarium
    "grass": "n03649909",  # lawn mower
    "brick": "n04326547",  # stone wall
    "retina": "n03920288",  # Petri dish
    "china": "n03877845",  # palace
    "clock": "n04548280",  # wall clock
}
SET_B: dict[str, str] = {
    "coffee": "n07920052",  # espresso
    "astronaut": "n03127747",  # crash helmet
    "camera": "n04485082",  # tripod
    "stereo_motorcycle": "n03785016",  # moped
    "moon": "n04525038",  # velvet: nothing lunar among the 1000 classes
    "gravel": "n09246464",  # cliff
    "flower": "n11939491",  # daisy
    "immunohistochemistry": "n03530642",  # honeycomb
    "page": "n07248320",  # book jacket
}

SKIMAGE_NAMES = (
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "camera",
    "coins",
    "hubble_deep_field",
    "moon",
    "grass",
    "gravel",
    "brick",
    "retina",
    "immunohistochemistry",
    "clock",
    "page",
    "stereo_motorcycle",
)


def sklearn_photos() -> dict[str, np.ndarray]:
    """scikit-learn's sample photos (``china``, ``flower``: 427x640 RGB uint8), in its own order."""
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images()
    return {Path(fn).stem: a for fn, a in zip(imgs.filenames, imgs.images, strict=True)}


def skimage_photos() -> dict[str, np.ndarray]:
    """scikit-image's sample photos named in ``SKIMAGE_NAMES``, as that package returns them (some grey,
    some not uint8); ``stereo_motorcycle`` is the left image of the stereo pair."""
    import skimage.data as skd

    out = {}
    for name in SKIMAGE_NAMES:
        a = getattr(skd, name)()
        out[name] = a[0] if name == "stereo_motorcycle" else a
    return out


def sample_photos() -> dict[str, np.ndarray]:
    """All 18 photos: scikit-image's, then scikit-learn's."""
    return {**skimage_photos(), **sklearn_photos()}


def as_rgb(a: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 array: grey replicated to three channels, other dtypes rescaled to 0..255,
    an alpha channel dropped."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / (a.max() - a.min() + 1e-9)).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return a[..., :3]


def write_photos(root: Path, layout: Mapping[str, str], photos: Mapping[str, np.ndarray] | None = None) -> int:
    """Save each photo of ``layout`` (photo name -> path relative to ``root``, e.g. ``n02124075/chelsea.png``)
    as RGB; ``photos`` defaults to :func:`sample_photos`. Returns how many were written."""
    from PIL import Image

    photos = sample_photos() if photos is None else photos
    for name, rel in layout.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(as_rgb(photos[name])).save(path)
    return len(layout)


def photo_set_layout(folders: Mapping[str, str]) -> dict[str, str]:
    """The ImageFolder layout of a photo set such as ``SET_A``: ``<folder>/<photo>.png``."""
    return {name: f"{folder}/{name}.png" for name, folder in folders.items()}
