"""Pure samplers: keyed generators in, realized params out; their distributions are timm's/torchvision's.

Everything here samples params only (no pixels), from generators keyed exactly as the engine keys
them, so many thousands of draws stay cheap. Tolerances are 4-5 standard errors or KS/chi-square
tests at p > 1e-3; all draws are seeded, so each test either always passes or always fails.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from scipy import stats
from timm.data import auto_augment as taa
from timm.data.mixup import cutmix_bbox_and_lam

from kdcache.recipe import AugmentConfig
from kdcache.views.params import MAGNITUDE_SCALE, MixMode, cutmix_lambda
from kdcache.views.randaug import UnsupportedAugmentation, parse_rand_augment, sample_ops
from kdcache.views.rng import Domain, keyed_generator
from kdcache.views.sampling import (
    image_generator,
    mix_generator,
    ra_spec,
    sample_crop,
    sample_image_params,
    sample_mix_params,
)

SEED_CFG = AugmentConfig()  # the seed recipe at 224 px
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
GEOMETRIC = SIGNED  # in timm's default RandAugment set the geometric ops are exactly the signed ones


def se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# ---- keyed generators and purity -------------------------------------------------------------


def test_keyed_generator_is_pure_and_ignores_global_state():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    a = keyed_generator(3, Domain.IMAGE, 1, 2, 0).random(5)
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    _ = [random.random(), np.random.rand()]
    b = keyed_generator(3, Domain.IMAGE, 1, 2, 0).random(5)
    np.testing.assert_array_equal(a, b)


def test_keyed_generator_separates_keys():
    draws = {
        key: keyed_generator(*key).random()
        for key in [
            (0, Domain.IMAGE, 1, 2, 0),
            (1, Domain.IMAGE, 1, 2, 0),
            (0, Domain.MIX, 1, 2, 0),
            (0, Domain.IMAGE, 2, 1, 0),
            (0, Domain.IMAGE, 1, 2, 1),
            (0, Domain.IMAGE, 1, 2),
            (0, Domain.PLAN, 1),
            (0, Domain.MIX, 1),
        ]
    }
    assert len(set(draws.values())) == len(draws)


def test_keyed_generator_rejects_negative_keys():
    with pytest.raises(ValueError):
        keyed_generator(-1, Domain.IMAGE, 0)
    with pytest.raises(ValueError):
        keyed_generator(0, Domain.IMAGE, 0, -3)


def test_samplers_are_pure():
    spec = ra_spec(SEED_CFG)
    for sid in range(20):
        a = sample_image_params(image_generator(9, 2, sid, 1), 333, 222, SEED_CFG, spec)
        b = sample_image_params(image_generator(9, 2, sid, 1), 333, 222, SEED_CFG, spec)
        assert a == b
        assert sample_mix_params(mix_generator(9, 2, sid), 224, SEED_CFG) == sample_mix_params(
            mix_generator(9, 2, sid), 224, SEED_CFG
        )

    # Different keys give different params (crop coordinates alone nearly never collide).
    def crop(sid: int, rep: int) -> tuple[int, int, int, int]:
        p = sample_image_params(image_generator(9, 2, sid, rep), 333, 222, SEED_CFG, spec)
        return p.top, p.left, p.height, p.width

    crops = {crop(sid, 0) for sid in range(50)}
    repeats = {crop(0, r) for r in range(3)}
    assert len(crops) >= 49 and len(repeats) == 3


# ---- RandomResizedCrop ----------------------------------------------------------------------


def _our_crops(width: int, height: int, n: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    return np.array([sample_crop(image_generator(0, 0, i, 0), width, height, scale, ratio) for i in range(n)])


def _torchvision_crops(width: int, height: int, n: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    img = torch.empty(3, height, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return np.array([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


def _tv_fallback(width: int, height: int, ratio) -> tuple[int, int, int, int]:
    """torchvision's central-crop fallback, re-implemented here independently."""
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    ("width", "height", "max_frac"),
    [(640, 427, 1.0), (300, 300, 1.0), (120, 300, 120 * 160 / (120 * 300))],  # portrait: aspect >= 3/4 caps h
)
def test_crop_area_and_aspect_ranges(width, height, max_frac):
    n = 3000
    c = _our_crops(width, height, n)
    top, left, h, w = c.T
    assert (h > 0).all() and (w > 0).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    fb = np.array([tuple(row) == _tv_fallback(width, height, (3 / 4, 4 / 3)) for row in c])
    ok = ~fb
    # w and h are rounded: widen each bound by half a pixel on either side.
    area = width * height
    assert ((w[ok] + 0.5) * (h[ok] + 0.5) / area >= 0.08).all()
    assert ((w[ok] - 0.5) * (h[ok] - 0.5) / area <= 1.0).all()
    assert ((w[ok] + 0.5) / (h[ok] - 0.5) >= 3 / 4).all()
    assert ((w[ok] - 0.5) / (h[ok] + 0.5) <= 4 / 3).all()
    # The range is actually used, not just respected.
    frac = w * h / area
    assert frac.min() < 0.1 and frac.max() > 0.85 * max_frac
    # Positions are uniform over the valid offsets.
    free = height - h[ok]
    rel = top[ok][free > 0] / free[free > 0]
    assert abs(rel.mean() - 0.5) < 0.05


@pytest.mark.parametrize(("width", "height"), [(640, 427), (300, 300), (120, 300), (200, 40)])
def test_crop_distribution_equals_torchvision(width, height):
    n = 2000
    ours, tv = _our_crops(width, height, n), _torchvision_crops(width, height, n)
    area = float(width * height)
    for f in (lambda c: c[:, 2] * c[:, 3] / area, lambda c: np.log(c[:, 3] / c[:, 2])):
        assert stats.ks_2samp(f(ours), f(tv)).pvalue > 1e-3
    # Same fallback frequency (the whole-image/central crop after 10 failed tries).
    fb = _tv_fallback(width, height, (3 / 4, 4 / 3))
    p_ours = np.mean([tuple(r) == fb for r in ours])
    p_tv = np.mean([tuple(r) == fb for r in tv])
    assert abs(p_ours - p_tv) < 5 * math.sqrt(max(p_tv, 1e-3) / n) + 1e-9


@pytest.mark.parametrize(
    ("width", "height", "scale", "ratio"),
    [
        (1000, 10, (0.08, 1.0), (3 / 4, 4 / 3)),  # far too wide: every try fails
        (10, 1000, (0.08, 1.0), (3 / 4, 4 / 3)),  # far too tall
        (333, 17, (0.08, 1.0), (3 / 4, 4 / 3)),
        (37, 333, (0.5, 1.0), (0.5, 1.5)),
        (300, 250, (2.0, 3.0), (3 / 4, 4 / 3)),  # scale > 1 forces failure; aspect in range: whole image
        (401, 299, (1.5, 1.5), (0.9, 1.1)),  # in_ratio 1.34 > 1.1: central crop of full height
    ],
)
def test_crop_fallback_equals_torchvision(width, height, scale, ratio):
    expected = _tv_fallback(width, height, ratio)
    tv = tuple(T.RandomResizedCrop.get_params(torch.empty(3, height, width), list(scale), list(ratio)))
    assert tv == expected  # our re-implementation agrees with the installed torchvision
    for i in range(50):
        assert sample_crop(image_generator(0, 0, i, 0), width, height, scale, ratio) == expected


def test_crop_fallback_is_only_taken_after_failures():
    """An aspect-5 image mostly fails the aspect test but not always: both outcomes occur."""
    c = _our_crops(200, 40, 2000)
    fb = np.array([tuple(r) == _tv_fallback(200, 40, (3 / 4, 4 / 3)) for r in c])
    assert 0.05 < fb.mean() < 0.95


# ---- flip, interpolation, RandAugment --------------------------------------------------------


@pytest.fixture(scope="module")
def seed_params():
    spec = ra_spec(SEED_CFG)
    return [sample_image_params(image_generator(0, 0, i, i % 3), 500, 375, SEED_CFG, spec) for i in range(6000)]


def test_flip_and_interpolation_rates(seed_params):
    n = len(seed_params)
    flip = np.mean([p.hflip for p in seed_params])
    bicubic = np.mean([p.bicubic for p in seed_params])
    assert abs(flip - 0.5) < 4 * se(0.5, n)
    assert abs(bicubic - 0.5) < 4 * se(0.5, n)
    # Independent of each other.
    both = np.mean([p.hflip and p.bicubic for p in seed_params])
    assert abs(both - 0.25) < 4 * se(0.25, n)


def test_rand_augment_spec_is_timms_default():
    spec = ra_spec(SEED_CFG)
    assert [op.name for op in spec.ops] == list(taa._RAND_TRANSFORMS)
    assert spec.num_layers == 2 and spec.choice_weights is None
    assert all(op.prob == 0.5 and op.magnitude == 7 and op.magnitude_std == 0.5 for op in spec.ops)


def test_rand_augment_op_choice(seed_params):
    names = [op.name for p in seed_params for op in p.ops]
    assert all(len(p.ops) == 2 for p in seed_params)
    assert set(names) == set(taa._RAND_TRANSFORMS)
    counts = np.array([names.count(k) for k in taa._RAND_TRANSFORMS])
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform, with replacement
    # The two layers are independent draws (with replacement): same op twice ~ 1/15 of images.
    same = np.mean([p.ops[0].name == p.ops[1].name for p in seed_params])
    assert abs(same - 1 / 15) < 4 * se(1 / 15, len(seed_params))


def test_rand_augment_magnitude_apply_sign_resample(seed_params):
    ops = [op for p in seed_params for op in p.ops]
    n = len(ops)
    m = np.array([op.magnitude for op in ops])
    assert ((m >= 0) & (m <= 10)).all()
    assert (m * MAGNITUDE_SCALE == np.round(m * MAGNITUDE_SCALE)).all()  # quantized to the record's unit
    assert abs(m.mean() - 7.0) < 5 * 0.5 / math.sqrt(n)
    assert abs(m.std() - 0.5) < 0.02
    assert stats.kstest(m, stats.norm(7, 0.5).cdf).pvalue > 1e-3

    applied = np.mean([op.applied for op in ops])
    assert abs(applied - 0.5) < 4 * se(0.5, n)

    signed = [op for op in ops if op.name in SIGNED]
    unsigned = [op for op in ops if op.name not in SIGNED]
    assert abs(np.mean([op.negate for op in signed]) - 0.5) < 4 * se(0.5, len(signed))
    assert not any(op.negate for op in unsigned)

    geometric = [op for op in ops if op.name in GEOMETRIC]
    assert abs(np.mean([op.bicubic for op in geometric]) - 0.5) < 4 * se(0.5, len(geometric))
    assert not any(op.bicubic for op in ops if op.name not in GEOMETRIC)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_fixed_interpolation_applies_to_crop_and_geometric_ops(interp):
    cfg = AugmentConfig(interpolation=interp)
    spec = ra_spec(cfg)
    ps = [sample_image_params(image_generator(1, 0, i, 0), 300, 200, cfg, spec) for i in range(400)]
    want = interp == "bicubic"
    assert all(p.bicubic == want for p in ps)
    geo = [op for p in ps for op in p.ops if op.name in GEOMETRIC]
    assert geo and all(op.bicubic == want for op in geo)


@pytest.mark.parametrize(
    ("config", "check"),
    [
        # Clipped to [0, 10]: m10 with std 2 is clipped at 10 about half of the time.
        ("rand-m10-mstd2", lambda m, a: m.max() == 10 and abs(np.mean(m == 10) - 0.5) < 0.05 and m.min() >= 0),
        ("rand-m0-mstd1", lambda m, a: m.min() == 0 and abs(np.mean(m == 0) - 0.5) < 0.05),
        # mstd > 100 means uniform in [0, m].
        (
            "rand-m8-mstd101",
            lambda m, a: abs(m.mean() - 4) < 0.15 and m.max() <= 8 and stats.kstest(m / 8, "uniform").pvalue > 1e-3,
        ),
        # No std: the magnitude is exactly m; p sets the apply rate.
        ("rand-m9-n3-p0.3", lambda m, a: (m == 9).all() and abs(a.mean() - 0.3) < 0.04),
        ("rand-m9-n1-p1.0", lambda m, a: a.all()),
    ],
)
def test_rand_augment_config_variants(config, check):
    spec = parse_rand_augment(config, 224, (124, 116, 104), "random", 0.45)
    layers = [sample_ops(image_generator(0, 0, i, 0), spec) for i in range(1000)]
    assert all(len(x) == spec.num_layers for x in layers)
    m = np.array([op.magnitude for x in layers for op in x])
    a = np.array([op.applied for x in layers for op in x])
    assert check(m, a)


@pytest.mark.parametrize("config", ["rand-m9-inc1", "augmix-m5", "v0", "rand-m9-tweights"])
def test_unsupported_rand_augment_configs_are_refused(config):
    with pytest.raises(UnsupportedAugmentation):
        parse_rand_augment(config, 224, (124, 116, 104), "random", 0.45)


# ---- Mixup / CutMix --------------------------------------------------------------------------

N_MIX = 10000


@pytest.fixture(scope="module")
def seed_mixes():
    return [sample_mix_params(mix_generator(0, 0, i), 224, SEED_CFG) for i in range(N_MIX)]


def test_mix_mode_share(seed_mixes):
    modes = [m.mode for m in seed_mixes]
    assert MixMode.NONE not in modes  # mix_prob 1.0
    assert abs(np.mean([m == MixMode.CUTMIX for m in modes]) - 0.5) < 4 * se(0.5, N_MIX)


def test_mixup_lambda_distribution(seed_mixes):
    lam = np.array([m.lam for m in seed_mixes if m.mode == MixMode.MIXUP])
    assert all(m.box == (0, 0, 0, 0) for m in seed_mixes if m.mode == MixMode.MIXUP)
    assert ((lam >= 0) & (lam <= 1)).all()
    assert (lam * 65535 == np.round(lam * 65535)).all()  # quantized to the stored unit
    sd = math.sqrt(1 / (4 * (2 * 0.2 + 1)))  # std of Beta(0.2, 0.2)
    assert abs(lam.mean() - 0.5) < 4 * sd / math.sqrt(lam.size)
    # Beta(0.2, 0.2) puts ~5% of its mass within 1/131070 of each end, which the 1/65535 storage
    # unit rounds to exactly 0 or 1: compare with an independent Beta sample quantized the same way.
    ref = np.round(np.random.default_rng(99).beta(0.2, 0.2, size=20000) * 65535) / 65535
    assert stats.ks_2samp(lam, ref).pvalue > 1e-3
    assert abs(np.mean(lam == 0) - np.mean(ref == 0)) < 0.015


def test_cutmix_lambda_is_box_area_exactly(seed_mixes):
    cut = [m for m in seed_mixes if m.mode == MixMode.CUTMIX]
    for m in cut:
        y0, y1, x0, x1 = m.box
        assert 0 <= y0 <= y1 <= 224 and 0 <= x0 <= x1 <= 224
        assert m.lam == 1.0 - (y1 - y0) * (x1 - x0) / (224 * 224) == cutmix_lambda(m.box, 224)


def _timm_cutmix_lams(n: int, size: int, alpha: float) -> np.ndarray:
    """timm's own CutMix draw (Beta lambda, rand_bbox, corrected lambda), on a private global state."""
    state = np.random.get_state()
    try:
        np.random.seed(4321)
        out = []
        for _ in range(n):
            lam = np.random.beta(alpha, alpha)
            _, lam = cutmix_bbox_and_lam((size, size), lam, correct_lam=True)
            out.append(lam)
        return np.array(out, dtype=np.float64)
    finally:
        np.random.set_state(state)


def test_cutmix_lambda_distribution_matches_timm(seed_mixes):
    ours = np.array([m.lam for m in seed_mixes if m.mode == MixMode.CUTMIX])
    timm_lams = _timm_cutmix_lams(ours.size, 224, 1.0)
    tol = 4 * math.sqrt(ours.var() / ours.size + timm_lams.var() / timm_lams.size)
    assert abs(ours.mean() - timm_lams.mean()) < tol
    assert stats.ks_2samp(ours, timm_lams).pvalue > 1e-3
    # Clipping at the borders pushes the corrected mean above Beta(1,1)'s 0.5.
    assert ours.mean() > 0.5 + tol


def test_cutmix_boxes_are_timm_sized():
    """Unclipped boxes are cut x cut squares, cut = int(size * sqrt(1 - lam)): odd sides occur."""
    size = 61
    cfg = AugmentConfig(image_size=size, mixup_alpha=0.0)
    sides = []
    for i in range(2000):
        m = sample_mix_params(mix_generator(0, 0, i), size, cfg)
        y0, y1, x0, x1 = m.box
        if y0 > 0 and x0 > 0 and y1 < size and x1 < size:
            assert y1 - y0 == x1 - x0
            sides.append(y1 - y0)
    sides = np.array(sides)
    assert sides.size > 200
    assert 0.3 < np.mean(sides % 2 == 1) < 0.7


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        ({"mix_prob": 0.3}, {MixMode.NONE: 0.7, MixMode.MIXUP: 0.15, MixMode.CUTMIX: 0.15}),
        ({"switch_prob": 0.8}, {MixMode.NONE: 0.0, MixMode.MIXUP: 0.2, MixMode.CUTMIX: 0.8}),
        ({"mixup_alpha": 0.0}, {MixMode.NONE: 0.0, MixMode.MIXUP: 0.0, MixMode.CUTMIX: 1.0}),
        ({"cutmix_alpha": 0.0}, {MixMode.NONE: 0.0, MixMode.MIXUP: 1.0, MixMode.CUTMIX: 0.0}),
        ({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, {MixMode.NONE: 1.0, MixMode.MIXUP: 0.0, MixMode.CUTMIX: 0.0}),
        ({"mix_prob": 0.0}, {MixMode.NONE: 1.0, MixMode.MIXUP: 0.0, MixMode.CUTMIX: 0.0}),
    ],
)
def test_mix_probabilities(changes, expect):
    cfg = AugmentConfig(**changes)
    n = 2000
    mixes = [sample_mix_params(mix_generator(3, 1, i), 224, cfg) for i in range(n)]
    for mode, p in expect.items():
        share = np.mean([m.mode == mode for m in mixes])
        assert abs(share - p) <= 4 * se(p, n) + 1e-12, (mode, share, p)
    for m in mixes:
        if m.mode == MixMode.NONE:
            assert m.lam == 1.0 and m.box == (0, 0, 0, 0)


def test_seeds_beyond_one_word_are_refused_rather_than_aliased():
    from kdcache.views.rng import Domain, keyed_generator

    keyed_generator(2**32 - 1, Domain.PLAN, 0)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        keyed_generator(2**32 + 5, Domain.PLAN, 0)
