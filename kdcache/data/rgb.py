"""Bring any Pillow image mode to 8-bit RGB, deterministically."""

from __future__ import annotations

import numpy as np
from PIL import Image

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of ``img``: alpha is dropped (as torchvision does), palettes expanded, CMYK
    converted, 16-bit grey scaled by 1/256 (Pillow's own 'I;16' -> 'L' conversion clips instead)."""
    if img.mode == "RGB":
        img.load()
        return img
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")
