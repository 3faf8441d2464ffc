"""timm's RandAugment, driven by parameters we sample ourselves.

timm's ``RandAugment`` draws op choice, probability, magnitude, sign and resample from the global
``random``/``np.random`` state, which would make views depend on call order. We let timm parse the
config string and build its ops (so op set, magnitude, std, prob and level mappings are timm's),
then sample those choices from a keyed generator and call timm's op functions with them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from timm.data import auto_augment as taa

from kdcache.views.params import OP_CODES, RAOp, quantize_magnitude

# Level functions that only flip the sign of a value proportional to the magnitude; for these we
# take |level| and apply our own sampled sign.
_SIGNED_LINEAR = {
    taa._rotate_level_to_arg,
    taa._shear_level_to_arg,
    taa._translate_abs_level_to_arg,
    taa._translate_rel_level_to_arg,
}
# Ops whose timm function resamples the image (and so takes a resample filter).
_GEOMETRIC = {
    taa.rotate,
    taa.shear_x,
    taa.shear_y,
    taa.translate_x_abs,
    taa.translate_y_abs,
    taa.translate_x_rel,
    taa.translate_y_rel,
}


class UnsupportedAugmentation(ValueError):
    pass


@dataclass(frozen=True)
class RASpec:
    """The parsed RandAugment policy: timm's op objects plus how we sample them."""

    ops: tuple[taa.AugmentOp, ...]
    num_layers: int
    choice_weights: tuple[float, ...] | None
    random_resample: bool  # bilinear/bicubic drawn per geometric op ('random' interpolation)
    default_bicubic: bool
    fill: tuple[int, int, int]

    def op(self, name: str) -> taa.AugmentOp:
        for op in self.ops:
            if op.name == name:
                return op
        raise UnsupportedAugmentation(f"RandAugment op {name!r} is not in this recipe's op set")


@lru_cache(maxsize=16)
def parse_rand_augment(
    config: str, image_size: int, fill: tuple[int, int, int], interpolation: str, translate_pct: float
) -> RASpec:
    if not config.startswith("rand"):
        raise UnsupportedAugmentation(f"only timm RandAugment configs ('rand-...') are supported, got {config!r}")
    hparams = {
        "translate_const": int(image_size * 0.45),
        "img_mean": tuple(fill),
        "translate_pct": translate_pct,
    }
    if interpolation != "random":
        hparams["interpolation"] = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    ra = taa.rand_augment_transform(config, hparams)
    for op in ra.ops:
        if op.name not in OP_CODES:
            raise UnsupportedAugmentation(f"RandAugment op {op.name!r} has no kdcache op code")
        if op.aug_fn is taa.gaussian_blur_rand:
            raise UnsupportedAugmentation(f"RandAugment op {op.name!r} draws its radius from Python's global random")
        if op.level_fn is taa._enhance_increasing_level_to_arg:
            raise UnsupportedAugmentation(
                f"RandAugment op {op.name!r} draws a non-linear random sign inside timm; use the default op set"
            )
    weights = None if ra.choice_weights is None else tuple(float(w) for w in ra.choice_weights)
    return RASpec(
        tuple(ra.ops), int(ra.num_layers), weights, interpolation == "random", interpolation == "bicubic", tuple(fill)
    )


def is_signed(op: taa.AugmentOp) -> bool:
    return op.level_fn in _SIGNED_LINEAR


def is_geometric(op: taa.AugmentOp) -> bool:
    return op.aug_fn in _GEOMETRIC


def sample_ops(g: np.random.Generator, spec: RASpec) -> tuple[RAOp, ...]:
    """Draw the realized layers with timm's semantics (choice with replacement unless weighted)."""
    n = len(spec.ops)
    if spec.choice_weights is None:
        idx = g.integers(0, n, size=spec.num_layers)
    else:
        idx = g.choice(n, spec.num_layers, replace=False, p=np.asarray(spec.choice_weights))
    out = []
    for i in idx:
        op = spec.ops[int(i)]
        # Fixed number of draws per layer, so one field never shifts another's stream.
        u_apply, u_sign, u_resample = g.random(3)
        noise = g.standard_normal()
        u_mag = g.random()
        applied = op.prob >= 1.0 or u_apply <= op.prob  # timm skips when random() > prob
        m = float(op.magnitude)
        if op.magnitude_std == float("inf"):
            m = u_mag * m
        elif op.magnitude_std > 0:
            m = m + op.magnitude_std * noise
        upper = op.magnitude_max or taa._LEVEL_DENOM
        m = quantize_magnitude(max(0.0, min(m, upper)))
        negate = is_signed(op) and u_sign > 0.5
        if is_geometric(op):
            bicubic = bool(u_resample < 0.5) if spec.random_resample else spec.default_bicubic
        else:
            bicubic = False
        out.append(RAOp(op.name, bool(applied), m, bool(negate), bicubic))
    return tuple(out)


def level_args(op: taa.AugmentOp, layer: RAOp) -> tuple:
    if op.level_fn is None:
        return ()
    if not is_signed(op):
        return tuple(op.level_fn(layer.magnitude, op.hparams))
    # timm's signed level fns draw their own sign from the global `random`: we discard it (it does
    # not influence the output) and apply the sampled one, restoring the global state so that
    # rendering never advances `random` (other code seeded from it must not depend on our views).
    state = random.getstate()
    try:
        args = op.level_fn(layer.magnitude, op.hparams)
    finally:
        random.setstate(state)
    v = abs(args[0])
    return (-v if layer.negate else v,)


def apply_ops(img: Image.Image, layers: tuple[RAOp, ...], spec: RASpec) -> Image.Image:
    for layer in layers:
        if not layer.applied:
            continue
        op = spec.op(layer.name)
        resample = Image.Resampling.BICUBIC if layer.bicubic else Image.Resampling.BILINEAR
        img = op.aug_fn(img, *level_args(op, layer), fillcolor=spec.fill, resample=resample)
    return img
