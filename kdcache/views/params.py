"""Realized view parameters and their fixed-size numeric encoding.

Sampling produces these values already quantized to the precision of the encoding, so decoding a
stored record gives back exactly the parameters that were rendered. Field-by-field layout, units
and limits: docs/view-params.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

# Stable op codes: append only. Names are timm's RandAugment op names (timm.data.auto_augment).
OP_NAMES: tuple[str, ...] = (
    "",  # 0: no op
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "PosterizeIncreasing",
    "PosterizeOriginal",
    "Solarize",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "Color",
    "ColorIncreasing",
    "Contrast",
    "ContrastIncreasing",
    "Brightness",
    "BrightnessIncreasing",
    "Sharpness",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "TranslateXRel",
    "TranslateYRel",
    "Desaturate",
    "GaussianBlur",
    "GaussianBlurRand",
)
OP_CODES: dict[str, int] = {name: code for code, name in enumerate(OP_NAMES) if name}

MAGNITUDE_SCALE = 4096  # magnitudes are stored in 1/4096 steps (range 0..15.99)
LAMBDA_SCALE = 65535  # Mixup lambda is stored in 1/65535 steps
MAX_COORD = 65535  # crop and box coordinates are uint16


class MixMode(IntEnum):
    NONE = 0
    MIXUP = 1
    CUTMIX = 2


@dataclass(frozen=True)
class RAOp:
    """One RandAugment layer as realized: which op, whether it fired, and its exact arguments."""

    name: str
    applied: bool
    magnitude: float  # on timm's 0..10 scale, a multiple of 1/MAGNITUDE_SCALE
    negate: bool = False  # sign flip, meaningful for signed ops only
    bicubic: bool = False  # resample of geometric ops; bilinear otherwise


@dataclass(frozen=True)
class ImageParams:
    """How one source image becomes one un-mixed view (crop box in source pixels)."""

    top: int
    left: int
    height: int
    width: int
    bicubic: bool
    hflip: bool
    ops: tuple[RAOp, ...] = ()


@dataclass(frozen=True)
class MixParams:
    """How the two views of a pair are mixed; box = (y0, y1, x0, x1) in output pixels."""

    mode: MixMode
    lam: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class ViewParams:
    """Everything needed to re-render one output view of a pair (its own image and the mix)."""

    image: ImageParams
    mix: MixParams


# ---- encoding -------------------------------------------------------------------------------
# Record (uint16[record_width(n_ops)]):
#   0 crop top, 1 crop left, 2 crop height, 3 crop width        (source pixels)
#   4 flags: bit0 hflip, bit1 bicubic crop resize, bits2-3 mix mode
#   5 + 2k: op word k: bits0-5 op code, bit6 applied, bit7 negate, bit8 bicubic
#   6 + 2k: magnitude k in 1/4096 units
#   5 + 2n: Mixup lambda in 1/65535 units (0 for CutMix / none: lambda derives from the box)
#   6 + 2n .. 9 + 2n: mix box y0, y1, x0, x1                       (output pixels)
_HEAD = 5
_TAIL = 5


def record_width(n_ops: int) -> int:
    return _HEAD + 2 * n_ops + _TAIL


def n_ops_for_width(width: int) -> int:
    """RandAugment layers of a record of ``width`` uint16 words (the inverse of :func:`record_width`)."""
    n, odd = divmod(width - _HEAD - _TAIL, 2)
    if n < 0 or odd:
        raise ValueError(f"no view record is {width} words wide (widths are {_HEAD + _TAIL} + 2 * RandAugment layers)")
    return n


def quantize_magnitude(m: float) -> float:
    return round(m * MAGNITUDE_SCALE) / MAGNITUDE_SCALE


def quantize_lambda(lam: float) -> float:
    return round(lam * LAMBDA_SCALE) / LAMBDA_SCALE


def cutmix_lambda(box: tuple[int, int, int, int], size: int) -> float:
    """Lambda of a CutMix output = share of pixels NOT covered by the pasted box."""
    y0, y1, x0, x1 = box
    return 1.0 - (y1 - y0) * (x1 - x0) / float(size * size)


class ParamDecodeError(ValueError):
    """A stored record does not describe a valid view."""


def encode(view: ViewParams, n_ops: int) -> np.ndarray:
    img, mix = view.image, view.mix
    if len(img.ops) != n_ops:
        raise ValueError(f"expected {n_ops} RandAugment layers, got {len(img.ops)}")
    rec = np.zeros(record_width(n_ops), dtype=np.uint16)
    for i, v in enumerate((img.top, img.left, img.height, img.width)):
        if not 0 <= v <= MAX_COORD:
            raise ValueError(f"crop coordinate {v} outside 0..{MAX_COORD}: source images must be < 64K px")
        rec[i] = v
    rec[4] = int(img.hflip) | int(img.bicubic) << 1 | int(mix.mode) << 2
    for k, op in enumerate(img.ops):
        code = OP_CODES[op.name]
        rec[_HEAD + 2 * k] = code | int(op.applied) << 6 | int(op.negate) << 7 | int(op.bicubic) << 8
        q = round(op.magnitude * MAGNITUDE_SCALE)
        if q / MAGNITUDE_SCALE != op.magnitude or not 0 <= q <= 0xFFFF:
            raise ValueError(f"magnitude {op.magnitude} is not quantized to 1/{MAGNITUDE_SCALE}")
        rec[_HEAD + 2 * k + 1] = q
    t = _HEAD + 2 * n_ops
    if mix.mode == MixMode.MIXUP:
        rec[t] = round(mix.lam * LAMBDA_SCALE)
    rec[t + 1 : t + 5] = mix.box
    return rec


def decode(rec: np.ndarray, n_ops: int, image_size: int) -> ViewParams:
    """Inverse of :func:`encode`; rejects records no sampler could have produced."""
    rec = np.asarray(rec)
    if rec.shape != (record_width(n_ops),):
        raise ParamDecodeError(f"record has shape {rec.shape}, expected ({record_width(n_ops)},)")
    if rec.dtype != np.uint16:
        raise ParamDecodeError(f"record dtype {rec.dtype}, expected uint16")
    top, left, height, width = (int(v) for v in rec[:4])
    if height == 0 or width == 0:
        raise ParamDecodeError("crop of zero size")
    flags = int(rec[4])
    if flags >> 4:
        raise ParamDecodeError(f"unknown flag bits in {flags:#x}")
    try:
        mode = MixMode((flags >> 2) & 3)
    except ValueError as e:
        raise ParamDecodeError(f"unknown mix mode {(flags >> 2) & 3}") from e
    ops = []
    for k in range(n_ops):
        word, q = int(rec[_HEAD + 2 * k]), int(rec[_HEAD + 2 * k + 1])
        code = word & 0x3F
        if word >> 9 or code == 0 or code >= len(OP_NAMES):
            raise ParamDecodeError(f"invalid RandAugment op word {word:#x} in layer {k}")
        ops.append(
            RAOp(OP_NAMES[code], bool(word >> 6 & 1), q / MAGNITUDE_SCALE, bool(word >> 7 & 1), bool(word >> 8 & 1))
        )
    t = _HEAD + 2 * n_ops
    box = tuple(int(v) for v in rec[t + 1 : t + 5])
    y0, y1, x0, x1 = box
    if mode == MixMode.CUTMIX:
        if not (y0 <= y1 <= image_size and x0 <= x1 <= image_size):
            raise ParamDecodeError(f"CutMix box {box} outside a {image_size}px view")
        lam = cutmix_lambda(box, image_size)  # type: ignore[arg-type]
    elif any(box):
        raise ParamDecodeError(f"box {box} set for mix mode {mode.name}")
    elif mode == MixMode.MIXUP:
        lam = int(rec[t]) / LAMBDA_SCALE
    else:
        lam = 1.0
    if mode != MixMode.MIXUP and rec[t]:
        raise ParamDecodeError(f"lambda field set for mix mode {mode.name}")
    image = ImageParams(top, left, height, width, bool(flags >> 1 & 1), bool(flags & 1), tuple(ops))
    return ViewParams(image, MixParams(mode, lam, box))  # type: ignore[arg-type]


def to_json(view: ViewParams) -> dict:
    """A readable dict of the realized params (for preview/show)."""
    img, mix = view.image, view.mix
    return {
        "crop": {"top": img.top, "left": img.left, "height": img.height, "width": img.width},
        "interpolation": "bicubic" if img.bicubic else "bilinear",
        "hflip": img.hflip,
        "rand_augment": [
            {
                "op": op.name,
                "applied": op.applied,
                "magnitude": op.magnitude,
                "negate": op.negate,
                "interpolation": "bicubic" if op.bicubic else "bilinear",
            }
            for op in img.ops
        ],
        "mix": {"mode": mix.mode.name.lower(), "lam": mix.lam, "box": list(mix.box)},
    }
