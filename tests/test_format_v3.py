"""Format version 3 (store/draws.py): an exact top-k plus M systematic draws from the rest of the teacher.

The draw arithmetic (keyed offsets, unbiasedness, the stored gaps), the round trip through both backends
and every storage, and builds with a real (peaked, 20-class) teacher: rows equal an independent
computation, fidelity, info, show, verify (which catches a changed draw), resume after SIGKILL and
torchrun give the same content hash, training refuses another temperature."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from build_helpers import cache_info, kill_once_writing, run_cli, run_torchrun, tiny_build, tiny_train, write_dataset
from test_fidelity import _replayed_logits
from test_format_v2 import CLASSES, peaked_teacher

from kdcache.errors import UsageError
from kdcache.student.run import check_temperature
from kdcache.teacher_cache.store import UnitData, content_hash, create_or_open_writer, num_units, open_cache
from kdcache.teacher_cache.store.draws import (
    DRAW_BLOCK,
    check_draws,
    draw_uniforms,
    draw_value,
    from_gaps,
    systematic_draws,
    to_gaps,
    with_draws,
)
from kdcache.teacher_cache.store.labels import decode_labels, encode_labels
from kdcache.teacher_cache.store.topk import logits_to_topk, topk_to_probs

K, M = 3, 8
V3_ARGS = ("--format-version", "3", "--topk", str(K), "--draws", str(M))


def _teacher(c: int = 200, seed: int = 0, scale: float = 2.5) -> np.ndarray:
    g = np.random.default_rng(seed)
    z = g.normal(size=c) * scale
    return (z - np.log(np.exp(z).sum())).astype(np.float32)


def _targets(lp: np.ndarray, k: int, m: int, u: np.ndarray) -> np.ndarray:
    """Dense targets of one teacher distribution under offsets ``u``, through the stored rows."""
    v = u.shape[0]
    top = torch.from_numpy(np.repeat(lp[None], v, 0))
    tlp, tcls = logits_to_topk(top, k)
    tlp, tcls = tlp.numpy(), tcls.numpy()
    drawn = systematic_draws(np.repeat(lp[None], v, 0), tcls, m, u)
    rows = with_draws(tlp, tcls, drawn.astype(tcls.dtype))
    return topk_to_probs(*rows, lp.shape[0]).astype(np.float64)


# ---- the arithmetic ------------------------------------------------------------------------------------------


def test_offsets_are_keyed_by_slot_not_by_batching():
    slots = np.arange(3 * DRAW_BLOCK + 17)
    whole = draw_uniforms(7, 2, slots)
    shuffled = np.random.default_rng(0).permutation(slots)
    assert np.array_equal(draw_uniforms(7, 2, shuffled), whole[shuffled])
    parts = np.concatenate([draw_uniforms(7, 2, slots[i : i + 50]) for i in range(0, len(slots), 50)])
    assert np.array_equal(parts, whole)
    assert ((whole >= 0) & (whole < 1)).all() and abs(whole.mean() - 0.5) < 0.02
    assert not np.array_equal(draw_uniforms(8, 2, slots), whole) and not np.array_equal(
        draw_uniforms(7, 3, slots), whole
    )


def test_draws_average_to_the_teacher_and_an_even_spread_does_not():
    """Over many offsets the mean target equals the teacher's distribution within sampling error; the
    format 1 rule (top-k, rest spread evenly) stays off by the same amount however many views."""
    lp = _teacher()
    p = np.exp(lp.astype(np.float64))
    views = 20000
    q = _targets(lp, 5, 16, draw_uniforms(0, 0, np.arange(views)))
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-6)
    mean = q.mean(0)
    # per class: the standard error of the mean of `views` targets, from their own spread
    se = q.std(0) / np.sqrt(views)
    z = np.abs(mean - p) / np.maximum(se, 1e-12)
    hit = se > 0
    assert hit.sum() > 50 and np.max(z[hit]) < 5.5, np.max(z[hit])
    assert np.abs(mean - p)[~hit].max() < 2e-3  # classes never drawn hold (almost) no rest mass
    l1 = np.abs(mean - p).sum()
    tlp, tcls = logits_to_topk(torch.from_numpy(lp[None]), 5)
    even = topk_to_probs(tlp.numpy(), tcls.numpy(), lp.shape[0])[0]
    assert l1 < 0.02 < np.abs(even - p).sum() / 5, (l1, np.abs(even - p).sum())


def test_draws_skip_the_exact_classes_and_classes_without_mass():
    lp = np.full((1, 10), -np.inf, np.float32)
    lp[0, [0, 3, 4, 8]] = np.log([0.5, 0.25, 0.125, 0.125])
    drawn = systematic_draws(lp, np.array([[0]]), 64, draw_uniforms(0, 0, np.array([5])))
    assert set(drawn[0].tolist()) == {3, 4, 8}
    assert np.array_equal(np.bincount(drawn[0], minlength=10)[[3, 4, 8]], [32, 16, 16])  # systematic: exact here
    assert (np.diff(drawn[0]) >= 0).all()


def test_stored_rows_round_trip_and_hold_no_less_than_all_the_mass():
    g = np.random.default_rng(3)
    lp = np.log(g.dirichlet(np.full(50, 0.3), size=400)).astype(np.float32)
    tlp, tcls = logits_to_topk(torch.from_numpy(lp), K)
    tlp, tcls = tlp.numpy(), tcls.numpy()
    drawn = systematic_draws(lp, tcls, M, draw_uniforms(1, 0, np.arange(400))).astype(tcls.dtype)
    rows = with_draws(tlp, tcls, drawn)
    mass = np.exp(rows[0].astype(np.float64)).sum(1)
    assert (mass >= 1 - 1e-12).all() and (mass < 1 + 2e-3).all()
    stored = encode_labels(*rows, K, M)
    assert set(stored) == {"topk_logprob", "topk_class", "draw_gap"}
    assert (stored["draw_gap"][:, 1:] >= 0).all()
    back = decode_labels(stored)
    assert back[0].tobytes() == rows[0].tobytes() and np.array_equal(back[1], rows[1])
    assert np.array_equal(from_gaps(to_gaps(drawn)), drawn)
    # rows no build makes are refused: a draw value off, draws out of order, a drawn class of the top-k
    off = rows[0].copy()
    off[0, K] = np.float16(-1.0)
    with pytest.raises(ValueError, match="log\\(rest / draws\\)"):
        encode_labels(off, rows[1], K, M)
    unsorted = rows[1].copy()
    unsorted[:, K:] = unsorted[:, K:][:, ::-1]
    with pytest.raises(ValueError, match="ascending"):
        encode_labels(rows[0], unsorted, K, M)
    clash = rows[1].copy()
    clash[:, K:] = clash[:, :1]
    with pytest.raises(ValueError, match="top-k"):
        encode_labels(rows[0], clash, K, M)
    assert np.isneginf(draw_value(np.zeros((1, 1), np.float16), M)[0])  # all the mass in the top-k


def test_the_check_accepts_knife_edges_and_names_a_moved_draw():
    lp = np.log(np.array([[0.4, 0.2, 0.2, 0.2]]))
    u = np.array([0.5])  # points 0.15 and 0.45 of the rest's 0.6: classes 1 ([0, 0.2)) and 3 ([0.4, 0.6))
    exact = np.array([[0]])
    stored = systematic_draws(lp, exact, 2, u)
    assert stored.tolist() == [[1, 3]]
    wrong, knife = check_draws(lp, exact, stored, u, 1e-3)
    assert not wrong.any() and not knife.any()
    # a fresh teacher whose class 3 now starts just above the point: within the tolerance, accepted and counted
    nudged = np.log(np.array([[0.4, 0.2, 0.2504, 0.1496]]))
    wrong, knife = check_draws(nudged, exact, stored, u, 1e-3)
    assert not wrong.any() and knife.tolist() == [[False, True]]
    wrong, _ = check_draws(lp, exact, np.array([[1, 2]]), u, 1e-3)
    assert wrong.tolist() == [[False, True]]


def test_training_at_another_temperature_is_refused_for_draws():
    with pytest.raises(UsageError, match="draws from the teacher's distribution at temperature 1"):
        check_temperature("cached", 2.0, K + M, 1000, draws=M)
    with pytest.raises(UsageError, match="draws"):
        check_temperature("cached", 2.0, 20, 20, draws=M)  # even where the row is as wide as the classes
    check_temperature("cached", 1.0, K + M, 1000, draws=M)
    check_temperature("online", 2.0, K + M, 1000, draws=M)


# ---- builds --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3build")
    data = write_dataset(root / "data", [f"c{i:02d}" for i in range(CLASSES)], per_class=1)  # 20 views an epoch
    return root, data, peaked_teacher(root / "t1.pth", 0)


@pytest.fixture(scope="module")
def v3_cache(setup) -> Path:
    root, data, t1 = setup
    out = root / "v3"
    run_cli(*tiny_build(data, t1, out, *V3_ARGS, "--epochs", "2"))
    return out


def test_a_format_3_build_stores_the_keyed_draws_of_the_teachers_rest(setup, v3_cache):
    import zarr

    _, _, t1 = setup
    r = open_cache(v3_cache)
    m = r.manifest
    assert (m.format_version, m.topk, m.draws, m.label_width, m.label_scheme) == (3, K, M, K + M, "top-3 + 8 draws")
    logits = _replayed_logits(v3_cache, t1).reshape(2, m.num_slots, CLASSES)
    for epoch in (0, 1):
        block = r.load_epoch(epoch)
        _, cls = logits_to_topk(torch.from_numpy(logits[epoch]), K)
        np.testing.assert_array_equal(block.topk_class[:, :K], cls.numpy())
        full = torch.log_softmax(torch.from_numpy(logits[epoch]), -1).numpy()
        u = draw_uniforms(m.seed, epoch, np.arange(m.num_slots))
        want = systematic_draws(full, cls.numpy(), M, u)
        np.testing.assert_array_equal(block.topk_class[:, K:], want)
        q = topk_to_probs(block.topk_logprob, block.topk_class, CLASSES)
        np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
    gaps = zarr.open_array(str(v3_cache / "e00000" / "draw_gap"), mode="r")
    assert gaps.shape == (m.num_slots, M)
    assert zarr.open_array(str(v3_cache / "e00000" / "topk_class"), mode="r").shape == (m.num_slots, K)
    doc = json.loads((v3_cache / "fidelity.json").read_text())
    assert doc["draws"] == M and "systematic draws" in doc["rule"] and "kl" not in doc
    teacher = np.exp(torch.log_softmax(torch.from_numpy(logits.reshape(-1, CLASSES)), -1).double().numpy())
    targets = np.concatenate([topk_to_probs(*_rows(r, e), CLASSES) for e in (0, 1)]).astype(np.float64)
    assert doc["noise"]["mean"] == pytest.approx(np.abs(targets - teacher).sum(1).mean(), rel=1e-3)
    assert doc["bias"]["units"] == 2 * num_units(m)
    text = run_cli("info", str(v3_cache), "--no-hash").stdout
    assert "+ 8 systematic draws from the rest (format 3: unbiased" in text
    assert "the 8 draws are unbiased" in text


def _rows(reader, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    b = reader.load_epoch(epoch)
    return b.topk_logprob, b.topk_class


def test_show_lists_the_draws_with_their_counts_and_dense_is_the_trainers_target(v3_cache):
    r = open_cache(v3_cache)
    block = r.load_epoch(0)
    views = [
        json.loads(x) for x in run_cli("show", str(v3_cache), "--slots", "0:2", "--json", "--dense").stdout.splitlines()
    ]
    for slot, v in enumerate(views):
        drawn = block.topk_class[slot, K:].tolist()
        assert {d["class"]: d["count"] for d in v["draws"]} == {c: drawn.count(c) for c in set(drawn)}
        dense = np.asarray(v["dense"], np.float64) if "dense" in v else None
        if dense is not None:
            want = topk_to_probs(block.topk_logprob[slot : slot + 1], block.topk_class[slot : slot + 1], CLASSES)[0]
            np.testing.assert_allclose(dense, want, atol=1e-6)
    assert "8 draws from the rest:" in run_cli("show", str(v3_cache), "--slots", "0:2").stdout


def test_verify_passes_and_names_a_view_whose_draw_was_changed(v3_cache, tmp_path):
    out = run_cli("verify", str(v3_cache), "--views", "40").stdout
    assert out.endswith("OK\n") and "draws checked against the fresh distribution" in out, out
    r = open_cache(v3_cache)
    m = r.manifest
    bad = tmp_path / "bad"
    w = create_or_open_writer(bad, m.replace(epochs_complete=()))
    changed = {}
    for epoch in (0, 1):
        for u in range(num_units(m)):
            data = r.read_unit(epoch, u)
            cls = data.topk_class.copy()
            if epoch == 0 and u == 1:  # one view: its first draw moves to a class no point falls in
                row = 0
                lo, hi = int(cls[row, K]), int(cls[row, K:].max())
                free = [c for c in range(CLASSES) if c not in cls[row].tolist()]
                new = next((c for c in free if c < lo), None)
                assert new is not None or hi < CLASSES - 1
                if new is None:
                    new = next(c for c in free if c > hi)
                cls[row, K:] = np.sort(np.concatenate([cls[row, K + 1 :], [new]]))
                changed[u * m.unit_size + row] = new
            w.write_unit(epoch, u, UnitData(**{**data.arrays(), "topk_class": cls}))
    w.finalize()
    proc = run_cli("verify", str(bad), "--views", str(2 * m.num_slots), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    named = {int(s) for s in re.findall(r"MISMATCH epoch 0 slot (\d+) .*draw \d+ of 8", proc.stderr)}
    assert named == set(changed), proc.stderr


@pytest.mark.parametrize("backend", ["zarr", "wds"])
def test_export_resume_after_sigkill_and_torchrun_keep_the_content_hash(setup, v3_cache, tmp_path, backend):
    _, data, t1 = setup
    want = content_hash(open_cache(v3_cache))
    if backend == "wds":
        out = tmp_path / "exported"
        run_cli("export", str(v3_cache), "--format", "wds", "--out", str(out))
        assert content_hash(open_cache(out)) == want
        back = tmp_path / "back"
        run_cli("export", str(out), "--format", "zarr", "--out", str(back))
        assert content_hash(open_cache(back)) == want
        ddp = tmp_path / "ddp"
        proc = run_torchrun(tiny_build(data, t1, ddp, *V3_ARGS, "--epochs", "2", "--format", "wds"), timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert content_hash(open_cache(ddp)) == want
        return
    args = tiny_build(data, t1, tmp_path / "killed", *V3_ARGS, "--epochs", "2", "--unit-size", "2")
    assert kill_once_writing(args, tmp_path / "killed", 6), "the build finished before it could be killed"
    run_cli(*args)
    clean = tmp_path / "clean"
    run_cli(*tiny_build(data, t1, clean, *V3_ARGS, "--epochs", "2", "--unit-size", "2"))
    assert cache_info(tmp_path / "killed")["content_digest"] == cache_info(clean)["content_digest"]


def test_formats_do_not_mix_and_a_student_trains_from_draws(setup, v3_cache, tmp_path):
    _, data, t1 = setup
    proc = run_cli(*tiny_build(data, t1, v3_cache, "--epochs", "2", "--format-version", "1"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "format_version" in proc.stderr and "draws" in proc.stderr
    proc = run_cli(*tiny_build(data, t1, tmp_path / "x", "--format-version", "1", "--draws", "4"), check=False)
    assert proc.returncode != 0 and "--draws needs --format-version 3" in proc.stderr
    run = tmp_path / "run"
    res = run_cli(*tiny_train(v3_cache, run, "--epochs", "1"))
    assert "soft labels: top-3 + 8 draws of 20" in res.stdout
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    kd = [x["train"]["kd"] for x in metrics if "train" in x]
    assert kd and all(np.isfinite(kd)) and min(kd) > 0


def test_the_default_scheme_follows_the_teachers_classes():
    """No --format-version or --topk: a teacher whose classes fit in the top-10 stores them all exactly
    (format 1); a larger one stores format 3's exact top-3 plus 40 draws. Explicit options keep their
    meaning (a --topk alone is format 1, as before format 3), and the command the registry records spells
    the settled scheme out."""
    from kdcache.teacher_cache.teacher_pass.command import build_command
    from kdcache.teacher_cache.teacher_pass.config import BuildConfig

    def settled(n: int, **kw) -> tuple:
        c = BuildConfig(teacher="t", data="d", epochs=1, **kw).for_classes(n)
        return c.format_version, c.topk, c.tail(), c.draws_per_view()

    assert settled(10) == (1, 10, 0, 0) and settled(3) == (1, 3, 0, 0)
    assert settled(1000) == (3, 3, 0, 40)
    assert settled(1000, topk=20) == (1, 20, 0, 0) and settled(15) == (3, 3, 0, 40)
    assert settled(1000, format_version=1) == (1, 10, 0, 0)
    assert settled(1000, tail_classes=5) == (2, 10, 5, 0) and settled(1000, draws=8) == (3, 3, 0, 8)
    command = build_command(BuildConfig(teacher="t", data="d", epochs=1).for_classes(1000))
    assert "--topk 3" in command and "--format-version 3 --draws 40" in command
    assert "--topk" not in build_command(BuildConfig(teacher="t", data="d", epochs=1))  # unsettled: the build decides


def test_a_build_without_format_options_stores_draws_for_a_twenty_class_teacher(setup, tmp_path):
    _, data, t1 = setup
    out = tmp_path / "auto"
    args = tiny_build(data, t1, out)
    i = args.index("--topk")
    run_cli(*args[:i], *args[i + 2 :])  # no --topk and no format options: the teacher's 20 classes decide
    m = open_cache(out).manifest
    assert (m.format_version, m.topk, m.draws) == (3, 3, 40)
    old = tmp_path / "old"
    run_cli(*tiny_build(data, t1, old))  # a --topk alone: format 1, as recorded commands of older caches mean
    assert (open_cache(old).manifest.format_version, open_cache(old).manifest.topk) == (1, 3)
