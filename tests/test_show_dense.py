"""`kdcache show --dense` (the full distribution train uses per view) and `--out` (the views, drawn)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from build_helpers import run_cli, three_class_setup, tiny_build
from PIL import Image

from kdcache.cli.show import CAPTION_LINES, LINE_HEIGHT
from kdcache.student.targets import TeacherTarget
from kdcache.teacher_cache.store import create_or_open_writer, num_units, open_cache
from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_unit


@pytest.fixture(scope="module", params=[0, 5], ids=["format1", "format2-tail5"])
def cache(tmp_path_factory, request):
    path = tmp_path_factory.mktemp("dense") / "cache"
    m = synthetic_manifest(num_samples=301, unit_size=64, epochs=1, tail_classes=request.param)
    w = create_or_open_writer(path, m)
    for u in range(num_units(m)):
        w.write_unit(0, u, synthetic_unit(m, 0, u))
    w.finalize()
    return path


def test_dense_probs_are_the_trainers_targets(cache):
    out = run_cli("show", str(cache), "--slots", "60:70", "--json", "--dense").stdout  # crosses a unit boundary
    views = [json.loads(x) for x in out.splitlines()]
    reader = open_cache(str(cache))
    block = reader.load_epoch(0)
    c = reader.manifest.num_classes
    # the trainer's call (trainer.py), on a batch of a different size and offset than show's
    rows = slice(58, 74)
    target = TeacherTarget.from_topk(
        torch.from_numpy(block.topk_logprob[rows]), torch.from_numpy(block.topk_class[rows]), c
    )
    want = target.log_probs.exp().numpy()
    assert block.topk_logprob.shape[1] == reader.manifest.label_width  # format 2: the tail too
    assert [v["slot"] for v in views] == list(range(60, 70))
    for v in views:
        probs = np.asarray(v["probs"], dtype=np.float32)
        assert probs.shape == (c,)
        np.testing.assert_array_equal(probs, want[v["slot"] - 58])
        # every stored class, the tail's included, keeps its stored probability (the mass stays below 1 here)
        lp, cls = block.topk_logprob[v["slot"]], block.topk_class[v["slot"]]
        assert np.exp(lp.astype(np.float64)).sum() < 1
        np.testing.assert_allclose(probs[cls], np.exp(lp.astype(np.float32)), rtol=1e-5)
        top = v["topk"][0]
        assert probs[top["class"]] == pytest.approx(top["prob"], abs=1e-5)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_dense_needs_json(cache):
    r = run_cli("show", str(cache), "--dense", check=False)
    assert r.returncode != 0 and "--json" in r.stderr + r.stdout


def test_out_draws_the_views_with_captions(tmp_path):
    data, weights = three_class_setup(tmp_path, per_class=4)
    c = tmp_path / "c"
    run_cli(*tiny_build(data, weights, c))
    png = tmp_path / "views.png"
    run_cli("show", str(c), "--slots", "0:4", "--out", str(png))
    img = np.asarray(Image.open(png).convert("RGB"))
    side = 32 * math.ceil(160 / 32)  # 32 px views enlarged to >= 160 px
    tile_h = side + CAPTION_LINES * LINE_HEIGHT + 4
    assert img.shape == (2 * (tile_h + 2) + 2, 2 * (side + 2) + 2, 3)  # 4 views: 2 x 2, pad 2
    # the first tile's picture is the stored view re-rendered: its digest matched at build time, so
    # compare with a replay of the same records
    from kdcache.views.replay import open_replay

    reader = open_cache(str(c))
    block = reader.load_epoch(0)
    view0 = open_replay(reader.manifest).render_pair(0, 0, block.params[0:2]).images[0]
    enlarged = np.asarray(Image.fromarray(view0).resize((side, side), Image.NEAREST))
    np.testing.assert_array_equal(img[2 : 2 + side, 2 : 2 + side], enlarged)
    caption = img[2 + side : 2 + tile_h, 2 : 2 + side]
    assert (caption < 128).any()  # text was drawn

    r = run_cli("show", str(c), "--slots", "1:4", "--out", str(png), check=False)
    assert r.returncode != 0 and "even slots" in r.stderr + r.stdout
