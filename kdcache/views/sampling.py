"""Pure parameter samplers: generator (+ sizes, config) -> realized params. No pixels, no state."""

from __future__ import annotations

import math

import numpy as np

from kdcache.recipe import AugmentConfig
from kdcache.views.params import ImageParams, MixMode, MixParams, cutmix_lambda, quantize_lambda
from kdcache.views.randaug import RASpec, parse_rand_augment, sample_ops
from kdcache.views.rng import Domain, keyed_generator


def ra_spec(cfg: AugmentConfig) -> RASpec | None:
    if not cfg.auto_augment:
        return None
    return parse_rand_augment(
        cfg.auto_augment, cfg.image_size, tuple(cfg.aug_fill), cfg.interpolation, cfg.translate_pct
    )


def sample_crop(
    g: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision/timm RandomResizedCrop.get_params semantics -> (top, left, h, w)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * g.uniform(scale[0], scale[1])
        aspect = math.exp(g.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(g.integers(0, height - h + 1))
            left = int(g.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback to a central crop, as torchvision does.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_image_params(
    g: np.random.Generator, width: int, height: int, cfg: AugmentConfig, spec: RASpec | None
) -> ImageParams:
    top, left, h, w = sample_crop(g, width, height, cfg.scale, cfg.ratio)
    u_interp, u_flip = g.random(2)
    bicubic = bool(u_interp < 0.5) if cfg.interpolation == "random" else cfg.interpolation == "bicubic"
    hflip = bool(u_flip < cfg.hflip)
    ops = sample_ops(g, spec) if spec is not None else ()
    return ImageParams(top, left, h, w, bicubic, hflip, ops)


def sample_mix_params(g: np.random.Generator, size: int, cfg: AugmentConfig) -> MixParams:
    """timm Mixup semantics for one pair: mix with prob, CutMix vs Mixup by switch prob, lambda ~ Beta."""
    u_mix, u_switch = g.random(2)
    lam_mixup = g.beta(cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha > 0 else 1.0
    lam_cutmix = g.beta(cfg.cutmix_alpha, cfg.cutmix_alpha) if cfg.cutmix_alpha > 0 else 1.0
    cy, cx = g.integers(0, size, size=2)
    if u_mix >= cfg.mix_prob or (cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0):
        return MixParams(MixMode.NONE, 1.0)
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or u_switch < cfg.switch_prob)
    if not use_cutmix:
        return MixParams(MixMode.MIXUP, quantize_lambda(float(lam_mixup)))
    # timm.data.mixup.rand_bbox (margin 0), then lambda corrected to the box's real area. The box
    # spans [c - cut//2, c + (cut+1)//2): exactly `cut` pixels before clipping, as in timm 1.0.31.
    ratio = math.sqrt(1.0 - float(lam_cutmix))
    cut = int(size * ratio)
    # Integer clip to [0, size] (as np.clip in timm), without np.clip's per-scalar overhead.
    cy, cx = int(cy), int(cx)
    y0, y1 = _clip(cy - cut // 2, size), _clip(cy + (cut + 1) // 2, size)
    x0, x1 = _clip(cx - cut // 2, size), _clip(cx + (cut + 1) // 2, size)
    box = (y0, y1, x0, x1)
    return MixParams(MixMode.CUTMIX, cutmix_lambda(box, size), box)


def _clip(v: int, size: int) -> int:
    return min(max(v, 0), size)


def image_generator(seed: int, epoch: int, sample_id: int, repeat: int) -> np.random.Generator:
    return keyed_generator(seed, Domain.IMAGE, epoch, sample_id, repeat)


def mix_generator(seed: int, epoch: int, pair: int) -> np.random.Generator:
    return keyed_generator(seed, Domain.MIX, epoch, pair)
