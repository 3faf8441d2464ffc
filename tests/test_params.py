"""Param records: encode/decode round-trip, and decode refuses what no sampler can produce."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.data import auto_augment as taa

from kdcache.views import params as P
from kdcache.views.params import (
    LAMBDA_SCALE,
    MAGNITUDE_SCALE,
    ImageParams,
    MixMode,
    MixParams,
    ParamDecodeError,
    RAOp,
    ViewParams,
    cutmix_lambda,
    decode,
    encode,
    record_width,
)

SIZE = 224

# The op codes are stored in caches: they may only ever be appended to.
FROZEN_OP_NAMES = (
    "",
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


def test_op_codes_are_append_only():
    assert P.OP_NAMES[: len(FROZEN_OP_NAMES)] == FROZEN_OP_NAMES
    assert len(P.OP_NAMES) < 64  # 6 bits in the op word


def test_every_timm_rand_augment_op_has_a_code():
    names = set(taa._RAND_TRANSFORMS) | set(taa._RAND_INCREASING_TRANSFORMS) | set(taa._RAND_3A)
    assert names <= set(P.OP_CODES)


def test_record_width():
    assert [record_width(n) for n in range(4)] == [10, 12, 14, 16]


# ---- strategies -----------------------------------------------------------------------------

coord = st.integers(0, P.MAX_COORD)
pos_coord = st.integers(1, P.MAX_COORD)
magnitude = st.integers(0, 0xFFFF).map(lambda q: q / MAGNITUDE_SCALE)
ra_op = st.builds(
    RAOp,
    name=st.sampled_from([n for n in P.OP_NAMES if n]),
    applied=st.booleans(),
    magnitude=magnitude,
    negate=st.booleans(),
    bicubic=st.booleans(),
)


@st.composite
def mix_params(draw) -> MixParams:
    mode = draw(st.sampled_from(list(MixMode)))
    if mode == MixMode.NONE:
        return MixParams(MixMode.NONE, 1.0)
    if mode == MixMode.MIXUP:
        return MixParams(MixMode.MIXUP, draw(st.integers(0, LAMBDA_SCALE)) / LAMBDA_SCALE)
    y0, y1 = sorted(draw(st.lists(st.integers(0, SIZE), min_size=2, max_size=2)))
    x0, x1 = sorted(draw(st.lists(st.integers(0, SIZE), min_size=2, max_size=2)))
    box = (y0, y1, x0, x1)
    return MixParams(MixMode.CUTMIX, cutmix_lambda(box, SIZE), box)


@st.composite
def view_params(draw, n_ops: int) -> ViewParams:
    image = ImageParams(
        top=draw(coord),
        left=draw(coord),
        height=draw(pos_coord),
        width=draw(pos_coord),
        bicubic=draw(st.booleans()),
        hflip=draw(st.booleans()),
        ops=tuple(draw(ra_op) for _ in range(n_ops)),
    )
    return ViewParams(image, draw(mix_params()))


@st.composite
def n_and_view(draw) -> tuple[int, ViewParams]:
    n = draw(st.integers(0, 4))
    return n, draw(view_params(n))


@settings(max_examples=150, deadline=None)
@given(n_and_view())
def test_encode_decode_round_trip(nv):
    n, view = nv
    rec = encode(view, n)
    assert rec.dtype == np.uint16 and rec.shape == (record_width(n),)
    back = decode(rec, n, SIZE)
    assert back == view
    np.testing.assert_array_equal(encode(back, n), rec)


def test_cutmix_lambda_is_one_minus_box_area():
    assert cutmix_lambda((0, 224, 0, 224), 224) == 0.0
    assert cutmix_lambda((10, 10, 0, 224), 224) == 1.0
    assert cutmix_lambda((0, 112, 0, 112), 224) == 0.75
    assert cutmix_lambda((3, 7, 5, 10), 10) == 1 - 20 / 100


# ---- decode rejects malformed records --------------------------------------------------------

N_OPS = 2
T = 5 + 2 * N_OPS  # index of the lambda word


def _valid(mode: MixMode) -> np.ndarray:
    ops = (RAOp("Rotate", True, 7.25, True, True), RAOp("Color", False, 6.5))
    mix = {
        MixMode.NONE: MixParams(MixMode.NONE, 1.0),
        MixMode.MIXUP: MixParams(MixMode.MIXUP, 12345 / LAMBDA_SCALE),
        MixMode.CUTMIX: MixParams(MixMode.CUTMIX, cutmix_lambda((10, 60, 20, 90), SIZE), (10, 60, 20, 90)),
    }[mode]
    rec = encode(ViewParams(ImageParams(5, 6, 100, 120, True, False, ops), mix), N_OPS)
    decode(rec, N_OPS, SIZE)  # the unmodified record is valid
    return rec


def _set(idx: int, value: int):
    def f(rec):
        rec[idx] = value
        return rec

    return f


def _or(idx: int, bits: int):
    def f(rec):
        rec[idx] |= bits
        return rec

    return f


BAD = {
    "unknown flag bit": (MixMode.NONE, _or(4, 1 << 4), "flag"),
    "high flag bit": (MixMode.CUTMIX, _or(4, 1 << 15), "flag"),
    "mix mode 3": (MixMode.NONE, _or(4, 3 << 2), "mix mode"),
    "zero crop height": (MixMode.NONE, _set(2, 0), "zero size"),
    "zero crop width": (MixMode.MIXUP, _set(3, 0), "zero size"),
    "op code 0": (MixMode.NONE, lambda r: _set(5, int(r[5]) & ~0x3F)(r), "op word"),
    "op code past the table": (MixMode.NONE, lambda r: _set(5, (int(r[5]) & ~0x3F) | len(P.OP_NAMES))(r), "op word"),
    "op code 63": (MixMode.MIXUP, _or(7, 0x3F), "op word"),
    "op word bit 9": (MixMode.NONE, _or(5, 1 << 9), "op word"),
    "op word bit 15": (MixMode.CUTMIX, _or(7, 1 << 15), "op word"),
    "cutmix box below view": (MixMode.CUTMIX, _set(T + 2, SIZE + 1), "outside"),
    "cutmix box right of view": (MixMode.CUTMIX, _set(T + 4, SIZE + 1), "outside"),
    "cutmix box inverted y": (MixMode.CUTMIX, _set(T + 1, 61), "outside"),
    "cutmix box inverted x": (MixMode.CUTMIX, _set(T + 3, 91), "outside"),
    "lambda set for cutmix": (MixMode.CUTMIX, _set(T, 1000), "lambda"),
    "lambda set for none": (MixMode.NONE, _set(T, 1), "lambda"),
    "box set for mixup": (MixMode.MIXUP, _set(T + 2, 5), "box"),
    "box set for none": (MixMode.NONE, _set(T + 4, 1), "box"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_decode_rejects_malformed(case):
    mode, mutate, match = BAD[case]
    rec = mutate(_valid(mode).copy())
    with pytest.raises(ParamDecodeError, match=match):
        decode(rec, N_OPS, SIZE)


def test_decode_rejects_wrong_shape_and_dtype():
    rec = _valid(MixMode.MIXUP)
    with pytest.raises(ParamDecodeError, match="shape"):
        decode(rec[:-1], N_OPS, SIZE)
    with pytest.raises(ParamDecodeError, match="shape"):
        decode(rec, N_OPS + 1, SIZE)
    with pytest.raises(ParamDecodeError, match="dtype"):
        decode(rec.astype(np.int32), N_OPS, SIZE)


def test_decode_checks_box_against_the_view_size():
    rec = _valid(MixMode.CUTMIX)
    decode(rec, N_OPS, 90)  # box (10, 60, 20, 90) fits a 90 px view ...
    with pytest.raises(ParamDecodeError, match="outside"):
        decode(rec, N_OPS, 89)  # ... but not an 89 px one


def test_parse_decode_error_is_a_value_error():
    assert issubclass(ParamDecodeError, ValueError)


# ---- encode refuses what it cannot store exactly ---------------------------------------------


def test_encode_rejects_unquantized_magnitude():
    view = ViewParams(ImageParams(0, 0, 10, 10, False, False, (RAOp("Rotate", True, 0.1),)), MixParams(MixMode.NONE, 1))
    with pytest.raises(ValueError, match="quantized"):
        encode(view, 1)


def test_encode_rejects_wrong_layer_count():
    view = ViewParams(ImageParams(0, 0, 10, 10, False, False, ()), MixParams(MixMode.NONE, 1.0))
    with pytest.raises(ValueError, match="layers"):
        encode(view, 2)


def test_encode_rejects_coordinates_beyond_uint16():
    view = ViewParams(ImageParams(0, 70000, 10, 10, False, False, ()), MixParams(MixMode.NONE, 1.0))
    with pytest.raises(ValueError, match="crop coordinate"):
        encode(view, 0)


def test_to_json_is_readable():
    view = decode(_valid(MixMode.CUTMIX), N_OPS, SIZE)
    j = P.to_json(view)
    assert j["crop"] == {"top": 5, "left": 6, "height": 100, "width": 120}
    assert j["interpolation"] == "bicubic" and j["hflip"] is False
    assert j["rand_augment"][0] == {
        "op": "Rotate",
        "applied": True,
        "magnitude": 7.25,
        "negate": True,
        "interpolation": "bicubic",
    }
    assert j["mix"] == {"mode": "cutmix", "lam": view.mix.lam, "box": [10, 60, 20, 90]}
