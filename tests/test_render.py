"""Rendering: crop/resize/flip like torchvision, RandAugment ops exactly timm's, mixing, digests.

The reference pipeline here is built by hand from torchvision's ``resized_crop`` and timm's op
functions (``timm.data.auto_augment.NAME_TO_OP``), with each op's argument computed from timm's
documented level mapping, so a wrong mapping, sign, fill or resample shows up as a pixel mismatch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.data import auto_augment as taa

from kdcache.data import to_rgb
from kdcache.recipe import AugmentConfig
from kdcache.views.params import ImageParams, MixMode, MixParams, RAOp, cutmix_lambda
from kdcache.views.render import digest, mix_pair, render_image
from kdcache.views.sampling import image_generator, ra_spec, sample_image_params

SIZE = 64
FILL = (124, 116, 104)  # the seed recipe's aug_fill
INTERP = {False: TF.InterpolationMode.BILINEAR, True: TF.InterpolationMode.BICUBIC}
RESAMPLE = {False: Image.Resampling.BILINEAR, True: Image.Resampling.BICUBIC}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photo with reduced contrast, so that AutoContrast and Equalize have work to do."""
    arr = load_sample_images().images[0][::2, ::2].astype(np.float32)
    return Image.fromarray((arr * 0.6 + 40).astype(np.uint8))


def reference_base(img: Image.Image, p: ImageParams, size: int) -> Image.Image:
    """torchvision's RandomResizedCrop + RandomHorizontalFlip for the given params."""
    out = TF.resized_crop(img, p.top, p.left, p.height, p.width, [size, size], interpolation=INTERP[p.bicubic])
    return TF.hflip(out) if p.hflip else out


def expected_level_args(name: str, m: float, negate: bool, translate_pct: float = 0.45) -> tuple:
    """timm's level -> argument mappings for its default RandAugment set, written out by hand."""
    lvl = m / 10.0
    sign = -1.0 if negate else 1.0
    return {
        "AutoContrast": (),
        "Equalize": (),
        "Invert": (),
        "Rotate": (sign * lvl * 30.0,),  # degrees, [-30, 30]
        "Posterize": (int(lvl * 4),),  # bits kept, [0, 4]
        "Solarize": (min(256, int(lvl * 256)),),  # threshold, [0, 256]
        "SolarizeAdd": (min(128, int(lvl * 110)),),  # added value, [0, 110]
        "Color": (lvl * 1.8 + 0.1,),  # enhance factor, [0.1, 1.9]
        "Contrast": (lvl * 1.8 + 0.1,),
        "Brightness": (lvl * 1.8 + 0.1,),
        "Sharpness": (lvl * 1.8 + 0.1,),
        "ShearX": (sign * lvl * 0.3,),  # [-0.3, 0.3]
        "ShearY": (sign * lvl * 0.3,),
        "TranslateXRel": (sign * lvl * translate_pct,),  # fraction of the width, [-0.45, 0.45]
        "TranslateYRel": (sign * lvl * translate_pct,),
    }[name]


def reference_op(img: Image.Image, op: RAOp) -> Image.Image:
    if not op.applied:
        return img
    args = expected_level_args(op.name, op.magnitude, op.negate)
    return taa.NAME_TO_OP[op.name](img, *args, fillcolor=FILL, resample=RESAMPLE[op.bicubic])


# ---- crop / resize / flip ---------------------------------------------------------------------


@pytest.mark.parametrize("bicubic", [False, True])
@pytest.mark.parametrize("hflip", [False, True])
def test_crop_resize_flip_equals_torchvision(image_folder, bicubic, hflip):
    src = image_folder.source()
    for i in range(len(src)):
        img = to_rgb(src.open(i))
        w, h = img.size
        # An off-centre crop (so the edges of the crop see neighbouring source pixels) and the full image.
        for p in (
            ImageParams(h // 5, w // 7, max(1, h // 2), max(1, (2 * w) // 3), bicubic, hflip),
            ImageParams(0, 0, h, w, bicubic, hflip),
        ):
            got = render_image(img, p, SIZE, None)
            assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, np.asarray(reference_base(img, p, SIZE)), err_msg=src.name(i))


@pytest.mark.parametrize(
    "crop",
    [(0, 0, 215, 100), (0, 0, 100, 321), (200, 0, 15, 10), (0, 300, 10, 21), (-1, 0, 10, 10), (0, -1, 10, 10)],
)
def test_crop_outside_the_image_is_refused(photo, crop):
    """A crop box beyond the source (a corrupt or foreign record) must not render padded with black."""
    assert photo.size == (320, 214)
    render_image(photo, ImageParams(0, 0, 214, 320, False, False), SIZE, None)  # the full image is fine
    with pytest.raises(ValueError, match="exceeds"):
        render_image(photo, ImageParams(*crop, False, False), SIZE, None)


def test_flip_mirrors_and_interpolations_differ(photo):
    p = ImageParams(20, 30, 150, 170, False, False)
    plain = render_image(photo, p, SIZE, None)
    flipped = render_image(photo, ImageParams(20, 30, 150, 170, False, True), SIZE, None)
    bicubic = render_image(photo, ImageParams(20, 30, 150, 170, True, False), SIZE, None)
    np.testing.assert_array_equal(flipped, plain[:, ::-1])
    assert not np.array_equal(plain, bicubic)


def test_every_image_mode_renders(image_folder):
    """L, P+transparency, RGBA, CMYK, I;16 ... all load to RGB and render with the full seed recipe."""
    src = image_folder.source()
    cfg = AugmentConfig(image_size=SIZE)
    spec = ra_spec(cfg)
    modes = set()
    for i in range(len(src)):
        raw = src.open(i)
        modes.add(raw.mode)
        img = to_rgb(raw)
        assert img.mode == "RGB" and img.size == raw.size
        p = sample_image_params(image_generator(0, 0, i, 0), *img.size, cfg, spec)
        out = render_image(img, p, SIZE, spec)
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert {"RGB", "L", "P", "RGBA", "CMYK", "I;16"} <= modes


# ---- RandAugment ------------------------------------------------------------------------------

VARIANTS = [(7.25, True, True), (2.5, False, False), (10.0, True, False)]  # (magnitude, negate, bicubic)


@pytest.mark.parametrize("name", taa._RAND_TRANSFORMS)
@pytest.mark.parametrize(("magnitude", "negate", "bicubic"), VARIANTS)
def test_applied_op_equals_timm_by_hand(photo, name, magnitude, negate, bicubic):
    spec = ra_spec(AugmentConfig(image_size=SIZE))
    signed = name in {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
    op = RAOp(name, True, magnitude, negate and signed, bicubic and signed)
    idle = RAOp("Invert", False, 9.0)  # a second layer that did not fire must change nothing
    p = ImageParams(37, 51, 160, 190, False, False, (op, idle))
    got = render_image(photo, p, SIZE, spec)

    base = reference_base(photo, p, SIZE)
    want = np.asarray(reference_op(base, op))
    np.testing.assert_array_equal(got, want)
    if (name, magnitude) != ("Solarize", 10.0):  # threshold 256 at m=10: timm's Solarize is a no-op there
        assert not np.array_equal(got, np.asarray(base)), f"{name} left the image unchanged: test is vacuous"


def test_signed_ops_respect_the_sampled_sign(photo):
    spec = ra_spec(AugmentConfig(image_size=SIZE))
    for name in ("Rotate", "ShearX", "TranslateYRel"):
        pos = render_image(photo, ImageParams(0, 0, 200, 200, False, False, (RAOp(name, True, 8.0),)), SIZE, spec)
        neg = render_image(
            photo, ImageParams(0, 0, 200, 200, False, False, (RAOp(name, True, 8.0, negate=True),)), SIZE, spec
        )
        assert not np.array_equal(pos, neg), name


def test_layers_apply_in_order(photo):
    spec = ra_spec(AugmentConfig(image_size=SIZE))
    ops = (RAOp("Rotate", True, 6.0, True, True), RAOp("Posterize", True, 4.0))
    p = ImageParams(10, 20, 180, 200, True, True, ops)
    want = reference_op(reference_op(reference_base(photo, p, SIZE), ops[0]), ops[1])
    np.testing.assert_array_equal(render_image(photo, p, SIZE, spec), np.asarray(want))
    swapped = ImageParams(10, 20, 180, 200, True, True, ops[::-1])
    assert not np.array_equal(render_image(photo, swapped, SIZE, spec), np.asarray(want))


def test_geometric_ops_fill_with_the_recipe_colour(photo):
    spec = ra_spec(AugmentConfig(image_size=SIZE))
    out = render_image(photo, ImageParams(0, 0, 200, 200, False, False, (RAOp("TranslateXRel", True, 10.0),)), 64, spec)
    # A positive shift of 45% of the width (timm samples x_in = x_out + 28.8) leaves the right 28
    # columns uncovered: they are filled with aug_fill, the rest is image content.
    fill = (out == np.array(FILL, dtype=np.uint8)).all(-1)
    assert fill[:, -28:].all()
    assert not fill[:, :30].all(0).any()


def test_rendering_uses_no_global_random_state(photo):
    import random

    spec = ra_spec(AugmentConfig(image_size=SIZE))
    ops = (RAOp("Rotate", True, 7.0, True, True), RAOp("ShearY", True, 5.0))
    p = ImageParams(10, 20, 180, 200, True, True, ops)
    random.seed(1)
    np.random.seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy())
    a = render_image(photo, p, SIZE, spec)
    assert random.getstate() == before[0], "rendering advanced Python's global `random`"
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])
    random.seed(2)
    np.random.seed(2)
    np.testing.assert_array_equal(render_image(photo, p, SIZE, spec), a)


# ---- mixing ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_views() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def test_cutmix_swaps_the_same_box(two_views):
    a, b = two_views
    box = (5, 40, 10, 33)
    mix = MixParams(MixMode.CUTMIX, cutmix_lambda(box, SIZE), box)
    oa, ob = mix_pair(a, b, mix)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[5:40, 10:33] = True
    np.testing.assert_array_equal(oa[inside], b[inside])
    np.testing.assert_array_equal(oa[~inside], a[~inside])
    np.testing.assert_array_equal(ob[inside], a[inside])
    np.testing.assert_array_equal(ob[~inside], b[~inside])
    # lambda is the share of each output's own pixels.
    assert np.mean((oa == a).all(-1)) >= mix.lam - 1e-9
    assert mix.lam == 1 - inside.mean()
    # Inputs are untouched.
    assert not np.shares_memory(oa, a) and not np.shares_memory(ob, b)


def test_cutmix_empty_and_full_box(two_views):
    a, b = two_views
    oa, ob = mix_pair(a, b, MixParams(MixMode.CUTMIX, 1.0, (7, 7, 0, SIZE)))
    np.testing.assert_array_equal(oa, a)
    np.testing.assert_array_equal(ob, b)
    oa, ob = mix_pair(a, b, MixParams(MixMode.CUTMIX, 0.0, (0, SIZE, 0, SIZE)))
    np.testing.assert_array_equal(oa, b)
    np.testing.assert_array_equal(ob, a)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 12345 / 65535, 0.9, 1.0])
def test_mixup_is_rint_of_a_float32_blend(two_views, lam):
    a, b = two_views
    oa, ob = mix_pair(a, b, MixParams(MixMode.MIXUP, lam))
    l32 = np.float32(lam)
    want_a = np.rint(a.astype(np.float32) * l32 + b.astype(np.float32) * (np.float32(1) - l32)).astype(np.uint8)
    want_b = np.rint(b.astype(np.float32) * l32 + a.astype(np.float32) * (np.float32(1) - l32)).astype(np.uint8)
    np.testing.assert_array_equal(oa, want_a)
    np.testing.assert_array_equal(ob, want_b)
    assert oa.dtype == ob.dtype == np.uint8
    # mix(A, B) and mix(B, A) are mirror images of each other.
    ob2, oa2 = mix_pair(b, a, MixParams(MixMode.MIXUP, lam))
    np.testing.assert_array_equal(oa, oa2)
    np.testing.assert_array_equal(ob, ob2)


def test_mixup_rounds_half_to_even_not_down():
    a = np.array([[[0, 0, 2]]], dtype=np.uint8)
    b = np.array([[[1, 3, 3]]], dtype=np.uint8)
    oa, _ = mix_pair(a, b, MixParams(MixMode.MIXUP, 0.5))
    assert oa.tolist() == [[[0, 2, 2]]]  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2


def test_no_mix_is_identity(two_views):
    a, b = two_views
    oa, ob = mix_pair(a, b, MixParams(MixMode.NONE, 1.0))
    np.testing.assert_array_equal(oa, a)
    np.testing.assert_array_equal(ob, b)


# ---- digests ----------------------------------------------------------------------------------


def test_digest_is_8_bytes_of_blake2b_over_the_pixels(two_views):
    a, _ = two_views
    want = int.from_bytes(hashlib.blake2b(a.tobytes(), digest_size=8).digest(), "little")
    assert digest(a) == want
    assert 0 <= digest(a) < 2**64


def test_one_pixel_change_changes_the_digest(two_views):
    a, _ = two_views
    d = digest(a)
    for y, x, c in [(0, 0, 0), (SIZE - 1, SIZE - 1, 2), (17, 3, 1)]:
        b = a.copy()
        b[y, x, c] ^= 1
        assert digest(b) != d


def test_digest_of_a_strided_view_equals_that_of_its_copy(two_views):
    a, _ = two_views
    flipped = a[:, ::-1]
    assert digest(flipped) == digest(np.ascontiguousarray(flipped))
    assert digest(flipped) != digest(a)


def test_digest_refuses_non_uint8(two_views):
    a, _ = two_views
    with pytest.raises(TypeError):
        digest(a.astype(np.float32))


# ---- the engine end to end --------------------------------------------------------------------


def test_engine_pairs_equal_a_hand_built_pipeline(image_folder, make_engine):
    """ViewEngine.render_pair == torchvision crop/flip + timm ops by hand + the documented mix."""
    engine = make_engine(seed=3, image_size=SIZE)
    src = image_folder.source()
    modes = set()
    for epoch in (0, 1):
        for pair in range(engine.plan(epoch).num_pairs):
            r = engine.render_pair(epoch, pair)
            pa, pb = r.params
            assert pa.mix == pb.mix
            modes.add(pa.mix.mode)
            base = []
            for sid, vp in zip(r.sample_ids, r.params, strict=True):
                img = reference_base(to_rgb(src.open(int(sid))), vp.image, SIZE)
                for op in vp.image.ops:
                    img = reference_op(img, op)
                base.append(np.asarray(img))
            a, b = base
            mix = pa.mix
            if mix.mode == MixMode.CUTMIX:
                y0, y1, x0, x1 = mix.box
                mask = np.zeros((SIZE, SIZE, 1), bool)
                mask[y0:y1, x0:x1] = True
                want = np.where(mask, b, a), np.where(mask, a, b)
            else:
                lam = np.float32(mix.lam)
                fa, fb = a.astype(np.float32), b.astype(np.float32)
                want = (
                    np.rint(fa * lam + fb * (1 - lam)).astype(np.uint8),
                    np.rint(fb * lam + fa * (1 - lam)).astype(np.uint8),
                )
            for k in range(2):
                np.testing.assert_array_equal(r.images[k], want[k], err_msg=f"epoch {epoch} pair {pair} view {k}")
                assert int(r.digests[k]) == digest(want[k])
            assert list(r.labels) == [src.label(int(s)) for s in r.sample_ids]
    assert {MixMode.MIXUP, MixMode.CUTMIX} <= modes
