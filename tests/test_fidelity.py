"""The build's soft-label fidelity figures (store/fidelity.py): per-view values, their mergeable summary,
fidelity.json next to the manifest, and where they are shown (build summary, info, train)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from build_helpers import cache_info, run_cli, three_class_setup, tiny_build

from kdcache.student.run import check_temperature
from kdcache.teacher_cache.store.fidelity import FidelityStats, topk_fidelity
from kdcache.teacher_cache.store.topk import logits_to_topk


def _np_fidelity(logits: np.ndarray, k: int, tail: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 numpy: mass outside the stored classes, and KL(teacher || even-spread target)
    where the target is rebuilt from fp16-rounded top-k log-probs and, in format 2, the next ``tail``
    classes at their 4-bit codes as docs/cache-format.md defines them: with the anchor a the k-th fp16
    log-prob, code c = floor((a - l) / 0.5) clipped to 0..15 stands for a - 0.5 (c + 0.5), in fp16; a row
    those values would leave under half its true outside mass takes c = ceil((a - l) / 0.5 - 0.5) instead."""
    z = logits.astype(np.float64)
    lp = z - z.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    p = np.exp(lp)
    idx = np.argsort(-lp, axis=1, kind="stable")[:, : k + tail]
    exact = np.take_along_axis(lp, idx, 1)
    stored = exact[:, :k].astype(np.float16).astype(np.float64)
    if tail:
        anchor = stored[:, -1:]

        def values(code):
            return (anchor - 0.5 * (code + 0.5)).astype(np.float16).astype(np.float64)

        code = np.clip(np.floor((anchor - exact[:, k:]) / 0.5), 0, 15)
        left = 1 - np.exp(stored).sum(1) - np.exp(values(code)).sum(1)
        guarded = left < 0.5 * (1 - np.exp(exact).sum(1)) - 1e-9
        down = np.clip(np.ceil((anchor - exact[:, k:]) / 0.5 - 0.5), 0, 15)
        stored = np.concatenate([stored, values(np.where(guarded[:, None], down, code))], 1)
    pk = np.exp(stored)
    c, k = z.shape[1], k + tail
    # the leftover mass is clamped at 0 (the stored mass may exceed 1 after rounding: the tail's bin middles
    # can lie above the exact values), and q floored at float32's smallest normal, as topk_fidelity does
    q = np.repeat((np.maximum(1 - pk.sum(1), 0) / (c - k))[:, None], c, axis=1)
    np.put_along_axis(q, idx, pk, 1)
    q /= q.sum(1, keepdims=True)
    outside = 1 - np.take_along_axis(p, idx, 1).sum(1)
    return outside, (p * (lp - np.log(np.maximum(q, np.finfo(np.float32).tiny)))).sum(1)


@pytest.mark.parametrize("tail", [0, 5], ids=["format1", "format2-tail5"])
def test_per_view_figures_match_numpy(tail):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 100, generator=g) * 3
    lp, cls = logits_to_topk(logits, 7, tail)
    outside, kl = topk_fidelity(logits, lp, cls)
    want_out, want_kl = _np_fidelity(logits.numpy(), 7, tail)
    np.testing.assert_allclose(outside.numpy(), want_out, atol=2e-6)
    np.testing.assert_allclose(kl.numpy(), want_kl, atol=2e-5, rtol=1e-4)
    assert want_kl.mean() > 0.05  # the even spread is visibly wrong here: the check has teeth
    if tail:  # and the tail visibly helps: a figure of the top-k alone would not match
        assert want_kl.mean() < 0.8 * _np_fidelity(logits.numpy(), 7)[1].mean()


def test_summary_matches_numpy_and_merges():
    rng = np.random.default_rng(1)
    outside = rng.beta(2, 3, 5000)
    kl = rng.lognormal(-1.5, 1.0, 5000)
    whole = FidelityStats()
    whole.add(outside, kl)
    parts = FidelityStats()
    for a in range(0, 5000, 1234):  # units of uneven size, merged in any order
        u = FidelityStats()
        u.add(outside[a : a + 1234], kl[a : a + 1234])
        parts.merge(FidelityStats.from_json(u.to_json()))
    for s in (whole, parts):
        summ = s.summary()
        assert summ["views"] == 5000
        assert summ["outside"]["mean"] == pytest.approx(outside.mean(), rel=1e-12)
        assert summ["kl"]["mean"] == pytest.approx(kl.mean(), rel=1e-12)
        for q in (50, 90, 99):
            exact_o = np.percentile(outside, q, method="inverted_cdf")
            exact_k = np.percentile(kl, q, method="inverted_cdf")
            # upper bin edge: never below the exact value, at most one bin above it
            assert exact_o <= summ["outside"][f"p{q}"] <= exact_o + 0.005 + 1e-12
            assert exact_k <= summ["kl"][f"p{q}"] <= exact_k * 10 ** (1 / 40) + 1e-12
    for name in ("outside", "kl"):  # histograms add exactly; sums up to float rounding
        np.testing.assert_array_equal(parts.counts[name], whole.counts[name])


def test_temperature_is_refused_with_a_partial_topk():
    with pytest.raises(ValueError, match=r"temperature is 2 .*only 10 of 1000"):
        check_temperature("cached", 2.0, 10, 1000)
    check_temperature("cached", 1.0, 10, 1000)  # the even spread is what the build measured
    check_temperature("cached", 2.0, 1000, 1000)  # every class stored: exact at any T
    check_temperature("online", 2.0, 10, 1000)  # the online teacher gives full logits


def _replayed_logits(cache: Path, weights: Path) -> np.ndarray:
    """The test teacher on every stored view, re-rendered from its stored params (independent of the build)."""
    from kdcache.models.normalize import Normalize
    from kdcache.models.teacher import create_teacher
    from kdcache.teacher_cache.store import open_cache
    from kdcache.views.replay import open_replay

    reader = open_cache(str(cache))
    m = reader.manifest
    engine = open_replay(m)
    model, tinfo = create_teacher("test_resnet", str(weights), num_classes=m.num_classes)
    norm = Normalize(tinfo.mean, tinfo.std, False)
    out = []
    for e in sorted(reader.epochs_complete):
        block = reader.load_epoch(e)
        for pair in range(m.num_slots // 2):
            views = engine.render_pair(e, pair, block.params[2 * pair : 2 * pair + 2]).images
            with torch.inference_mode():
                out.append(model.eval()(norm(torch.from_numpy(views))).float().numpy())
    return np.concatenate(out)


def test_build_records_fidelity_and_resume_merges(tmp_path):
    data, weights = three_class_setup(tmp_path, per_class=4)
    out = tmp_path / "c"
    run_cli(*tiny_build(data, weights, out, "--topk", "1", "--epochs", "1"))
    first = json.loads((out / "fidelity.json").read_text())
    r = run_cli(*tiny_build(data, weights, out, "--topk", "1", "--epochs", "2"))  # extends: epoch 1 only runs
    doc = json.loads((out / "fidelity.json").read_text())
    assert first["views"] == 12 and doc["views"] == 24  # both runs' units merged

    want_out, want_kl = _np_fidelity(_replayed_logits(out, weights), 1)
    # a random-init teacher is nearly uniform: small KL, so compare tightly
    assert doc["outside"]["mean"] == pytest.approx(want_out.mean(), abs=1e-5)
    assert doc["kl"]["mean"] == pytest.approx(want_kl.mean(), rel=1e-2, abs=1e-7)
    assert want_kl.mean() > 1e-4
    assert doc["outside"]["p90"] >= np.percentile(want_out, 90, method="inverted_cdf") - 1e-4

    # fidelity is bookkeeping: the manifest and content hash do not carry it
    assert not {"fidelity", "outside", "kl"} & set(json.loads((out / "manifest.json").read_text()))
    info = cache_info(out)
    assert info["fidelity"]["views"] == 24
    assert info["fidelity"]["kl"]["mean"] == pytest.approx(doc["kl"]["mean"])
    assert "mass outside the stored classes mean" in r.stderr
    assert "fidelity     mass outside the stored classes" in run_cli("info", str(out), "--no-hash").stdout


def test_content_hash_ignores_fidelity(tmp_path):
    data, weights = three_class_setup(tmp_path, per_class=4)
    out = tmp_path / "c"
    run_cli(*tiny_build(data, weights, out))
    before = cache_info(out)["content_hash"]
    (out / "fidelity.json").unlink()  # as a cache built before kdcache measured it
    after = cache_info(out)
    assert after["content_hash"] == before and after["fidelity"] is None
    assert "not recorded" in run_cli("info", str(out), "--no-hash").stdout


def test_quantiles_never_exceed_the_largest_value():
    """k = C stores every class: the mass outside is exactly 0 for every view, and so are its quantiles
    (a bin's upper edge alone would report 0.005)."""
    from kdcache.teacher_cache.store.fidelity import FidelityStats

    s = FidelityStats()
    s.add(np.zeros(50), np.full(50, 2e-4))
    half = FidelityStats.from_json(s.to_json())
    s.merge(half)
    summary = s.summary()
    assert summary["outside"] == {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    assert all(summary["kl"][f"p{q}"] <= 2e-4 + 1e-12 for q in (50, 90, 99))
