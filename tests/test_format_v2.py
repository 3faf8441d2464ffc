"""Format version 2 (store/labels.py): the top-k as in version 1 plus a tail of m classes at 4-bit codes.

The label arithmetic (quantisation, encoding, bounds), export between backends, compatibility with the
format 1 caches of the code before format 2 (tests/data/v1_cache), and a build with a real teacher.
The stores' own round trips are in test_store_conformance.py ("format version 2")."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from build_helpers import cache_info, run_cli, tiny_build, write_dataset
from test_fidelity import _np_fidelity, _replayed_logits

from kdcache.teacher_cache.store import (
    Manifest,
    UnitData,
    content_hash,
    create_or_open_writer,
    num_units,
    open_cache,
)
from kdcache.teacher_cache.store.labels import decode_labels, encode_labels
from kdcache.teacher_cache.store.tail import (
    TAIL_LEVELS,
    TAIL_STEP,
    quantize_tail,
    tail_bounds,
    tail_values,
)
from kdcache.teacher_cache.store.topk import logits_to_topk
from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_unit

V1_DATA = Path(__file__).resolve().parent / "data" / "v1_cache"
K, M = 3, 9  # the label tests' top-k and tail
FP16_MIN = float(np.finfo(np.float16).min)


def bits(a) -> np.ndarray:
    """float16 values as their bit patterns: array_equal on these is bitwise (-0 != 0, NaN == NaN)."""
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    assert a.dtype == np.float16, a.dtype
    return a.view(np.uint16)


# ---- the label arithmetic -----------------------------------------------------------------------------------


def exact_rows(n: int = 3000, c: int = 60, seed: int = 0) -> np.ndarray:
    """float32 log-probs (n, K+M) sorted descending, as logits_to_topk has them before quantising: from
    near-uniform teachers (every tail code 0) to peaked ones (tails far below the anchor: codes clipped at 15)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1.7, n)[:, None]
    lp = torch.log_softmax(torch.randn(n, c, generator=g) * scale, -1)
    return lp.sort(-1, descending=True).values[:, : K + M].numpy()


def extreme_rows() -> np.ndarray:
    """Rows whose anchor is near (or below) float16's minimum, or whose tail is -inf."""
    rows = [
        [-1.0, -65000.0, -65490.0, -65500.0, -65503.0, -65510.0, -65600.0, -66000.0, -7e4, -1e6, -1e30, -np.inf],
        [-0.5, -65000.0, -65480.0, -65480.1, -65481.0, -65483.0, -65485.0, -65488.0, -65490.0, -65495.0, -65504.0,
         -65505.0],
        [-7e4, -8e4, -9e4, -1e5, -2e5, -3e5, -4e5, -5e5, -6e5, -7e5, -8e5, -np.inf],
        [-0.1, -2.0, -3.0, -3.1, -4.0, -5.0, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf],
    ]  # fmt: skip
    return np.array(rows, np.float32)


def around_512_rows(n: int = 2000, seed: int = 1) -> np.ndarray:
    """Log-probs around -512 nats, where float16's spacing reaches 0.5 = one code step: decoded bin middles
    round half-way to their neighbours'."""
    g = np.random.default_rng(seed)
    x = -(g.uniform(495, 530, (n, 1)) + g.uniform(0, 10, (n, K + M)))
    return np.sort(x.astype(np.float32), axis=1)[:, ::-1].copy()


def ref_codes(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, guarded rows) of exact rows by docs/cache-format.md's rule, in float64, independently of
    labels.py: each value's bin; a row whose bin middles leave the unstored classes under half of their true
    mass (by more than 1e-9) takes ceil((a - l) / 0.5 - 0.5) instead."""
    a = np.maximum(rows[:, k - 1], FP16_MIN).astype(np.float16).astype(np.float64)[:, None]
    x = (a - rows[:, k:].astype(np.float64)) / TAIL_STEP
    floor = np.clip(np.floor(x), 0, TAIL_LEVELS - 1)
    down = np.clip(np.ceil(x - 0.5), 0, TAIL_LEVELS - 1)

    def value(c):
        return (a - TAIL_STEP * (c + 0.5)).astype(np.float16).astype(np.float64)

    head = np.exp(np.maximum(rows[:, :k], FP16_MIN).astype(np.float16).astype(np.float64)).sum(1)
    true_left = 1 - np.exp(rows.astype(np.float64)).sum(1)
    guarded = 1 - (head + np.exp(value(floor)).sum(1)) < 0.5 * true_left - 1e-9
    return np.where(guarded[:, None], down, floor).astype(np.uint8), guarded


def test_quantize_tail_equals_the_documented_rule_for_numpy_and_torch_inputs():
    """One implementation (torch) serves both input kinds; its output is checked against ref_codes, an
    independent float64 implementation of docs/cache-format.md's rule, including the float16 extremes."""
    rows = np.concatenate([exact_rows(), extreme_rows(), around_512_rows(200)])
    for k in (1, K, K + M):  # k + m = K + M columns: tails of 11, 9 and none
        np_out = quantize_tail(rows, k)
        torch_out = quantize_tail(torch.from_numpy(rows), k)
        assert np_out.dtype == np.float16 and torch_out.dtype == torch.float16
        np.testing.assert_array_equal(bits(np_out), bits(torch_out))
        head = np.maximum(rows[:, :k], FP16_MIN).astype(np.float16)
        np.testing.assert_array_equal(bits(np_out[:, :k]), bits(head))
        if k < K + M:
            codes, _ = ref_codes(rows, k)
            want = (head[:, -1:].astype(np.float64) - TAIL_STEP * (codes + 0.5)).clip(FP16_MIN).astype(np.float16)
            np.testing.assert_array_equal(bits(np_out[:, k:]), bits(want))
    # the data covers both ends of the code range
    codes = ref_codes(rows, K)[0]
    assert codes.dtype == np.uint8 and (codes == 0).any() and (codes == TAIL_LEVELS - 1).any()
    assert (codes[-200:] > 0).any()  # around -512 the codes are not all 0 (the rows span 10 nats)


def test_decoded_tail_lies_in_its_bin_of_the_exact_value():
    rows = exact_rows()
    q = quantize_tail(rows, K).astype(np.float32)
    anchor, exact, decoded = q[:, K - 1 : K], rows[:, K:], q[:, K:]
    codes, guarded = ref_codes(rows, K)
    np.testing.assert_array_equal(encode_labels(q.astype(np.float16), _ids(len(rows)), K)["tail_code"], codes)
    assert len(np.unique(codes)) == TAIL_LEVELS  # every code occurs
    assert 0 < guarded.sum() < len(rows) / 2  # both rules occur: the guard only where a sharp teacher needs it
    # Half a step from the bin's middle, plus the fp16 rounding of the decoded value, plus how far an exact value
    # lies above an anchor that rounded down (its bin, code 0, starts at the anchor).
    slack = np.spacing(np.abs(decoded).astype(np.float16)).astype(np.float32) / 2 + np.maximum(exact - anchor, 0)
    err = exact - decoded
    inner = codes < TAIL_LEVELS - 1
    mid = inner & ~guarded[:, None]
    assert (np.abs(err[mid]) <= TAIL_STEP / 2 + slack[mid] + 1e-6).all(), np.abs(err[mid]).max()
    assert (np.abs(err[mid]) > 0.2).any()  # (the bound is nearly reached: the test would see a bin too wide)
    # a guarded row's values never exceed the exact ones, and lie less than a step below them
    low = inner & guarded[:, None]
    assert (err[low] >= -slack[low] - 1e-6).all() and (err[low] < TAIL_STEP + slack[low]).all()
    # the last code is open below: its exact value is anywhere under its bin's top
    last = ~inner
    assert (exact[last] <= anchor.repeat(M, 1)[last] - (TAIL_LEVELS - 1.5) * TAIL_STEP + 1e-6).all()
    np.testing.assert_array_equal(decoded[last], (anchor - 7.75).astype(np.float16).repeat(M, 1)[last])
    # never above the anchor (the k-th stored value), and sorted like the exact values
    assert (decoded <= anchor).all() and (np.diff(q, axis=1) <= 0).all()


def _ids(n: int) -> np.ndarray:
    return np.tile(np.arange(K + M, dtype=np.int16), (n, 1))


def test_the_guard_keeps_the_mass_of_the_unstored_classes():
    """A sharp row whose tail values sit low in their bins: bin middles would give the tail more mass than the
    teacher left outside the top-k, and the even spread of the unstored classes would get nothing."""
    a = np.log(0.01)
    row = np.log([0.9, 0.02, 0.01] + [0.01 * np.exp(-0.49)] * M).astype(np.float32)[None]
    true_left = 1 - np.exp(row.astype(np.float64)).sum()
    assert 0.01 < true_left < 0.02
    middles = np.exp(a - TAIL_STEP * 0.5) * M + 0.93
    assert middles > 1  # the plain rule would leave the unstored classes nothing
    for x in (row, torch.from_numpy(row)):
        q = np.asarray(quantize_tail(x, K), np.float64)
        left = 1 - np.exp(q).sum()
        assert left >= 0.5 * true_left
        assert (q[0, K:] <= row[0, K:] + 1e-3).all()  # no decoded value above its exact one
    # Every row of the random set keeps at least half its outside mass, but for what the guard cannot change:
    # the fp16 rounding of the head, and the last code, which stands for a - 7.75 however far below the value is
    # (at most m e^-7.5 of the k-th probability).
    rows = exact_rows()
    q = quantize_tail(rows, K).astype(np.float64)
    exact = rows.astype(np.float64)
    head_over = np.exp(q[:, :K]).sum(1) - np.exp(exact[:, :K]).sum(1)
    last = ref_codes(rows, K)[0] == TAIL_LEVELS - 1
    last_over = ((np.exp(q[:, K:]) - np.exp(exact[:, K:])) * last).sum(1)
    true_left = 1 - np.exp(exact).sum(1)
    left = 1 - np.exp(q).sum(1)
    # (1e-6: float32 log-probs carry ~1e-7 of rounding in these sums; true_left itself can come out negative)
    assert (left + np.maximum(head_over, 0) + last_over >= 0.5 * true_left - 1e-6).all()
    assert (left < 0.5 * true_left).any()  # (the two exceptions do occur in this set)


def test_encode_decode_round_trip_is_exact_and_gives_the_codes_back():
    rows = exact_rows()
    cls = np.argsort(-rows, axis=1).astype(np.int16)  # any distinct ids
    lp = quantize_tail(rows, K)
    stored = encode_labels(lp, cls, K)
    assert list(stored) == ["topk_logprob", "topk_class", "tail_class", "tail_code"]
    assert stored["tail_code"].dtype == np.uint8 and stored["tail_code"].shape == (len(rows), M)
    np.testing.assert_array_equal(bits(stored["topk_logprob"]), bits(lp[:, :K]))
    np.testing.assert_array_equal(stored["topk_class"], cls[:, :K])
    np.testing.assert_array_equal(stored["tail_class"], cls[:, K:])
    np.testing.assert_array_equal(stored["tail_code"], ref_codes(rows, K)[0])  # the codes back
    lp2, cls2 = decode_labels(stored)
    np.testing.assert_array_equal(bits(lp2), bits(lp))
    np.testing.assert_array_equal(cls2, cls)
    assert cls2.dtype == cls.dtype
    # version 1 rows (no tail) pass through unchanged
    v1 = encode_labels(lp[:, :K], cls[:, :K], K)
    assert list(v1) == ["topk_logprob", "topk_class"]
    lp1, cls1 = decode_labels(v1)
    np.testing.assert_array_equal(cls1, cls[:, :K])
    np.testing.assert_array_equal(bits(lp1), bits(lp[:, :K]))


@pytest.mark.parametrize("rows", [extreme_rows, around_512_rows], ids=["near-fp16-min", "around-512"])
def test_where_float16_merges_codes_the_round_trip_still_keeps_the_bits(rows):
    """Near float16's limits several codes decode to the same value: the stored code may then differ from the
    exact one, but every quantised row is accepted and reads back bit for bit (around -512 nats a valid row
    used to be refused, failing the build)."""
    x = rows()
    lp = quantize_tail(x, K)
    cls = np.tile(np.arange(K + M, dtype=np.int16), (len(x), 1))
    stored = encode_labels(lp, cls, K)
    assert stored["tail_code"].max() < TAIL_LEVELS
    lp2, _ = decode_labels(stored)
    np.testing.assert_array_equal(bits(lp2), bits(lp))
    again = encode_labels(lp2, cls, K)
    np.testing.assert_array_equal(again["tail_code"], stored["tail_code"])


def test_encode_labels_refuses_tail_values_off_the_grid():
    rows = exact_rows(200)
    cls = np.tile(np.arange(K + M, dtype=np.int16), (len(rows), 1))
    lp = quantize_tail(rows, K)
    for bad in (
        rows.astype(np.float16),  # the exact values, unquantised
        np.concatenate([lp[:, :K], np.nextafter(lp[:, K:], np.float16(-np.inf))], 1),  # one ulp below
        np.concatenate([lp[:, :K], np.nextafter(lp[:, K:], np.float16(0))], 1),  # one ulp above
    ):
        with pytest.raises(ValueError, match="not format version 2 codes"):
            encode_labels(bad, cls, K)
    one = lp.copy()
    one[17, K + 4] = np.nextafter(one[17, K + 4], np.float16(-np.inf))  # a single value suffices
    with pytest.raises(ValueError, match="quantize_tail"):
        encode_labels(one, cls, K)


def test_tail_bounds_contain_the_exact_value_under_either_rule():
    rows = exact_rows()
    lp = quantize_tail(rows, K)
    low, high = tail_bounds(lp, K)
    v = lp[:, K:].astype(np.float32)
    codes, guarded = ref_codes(rows, K)
    np.testing.assert_array_equal(high, v + TAIL_STEP)
    last = codes == TAIL_LEVELS - 1
    assert np.isneginf(low[last]).all() and last.any()
    np.testing.assert_array_equal(low[~last], v[~last] - TAIL_STEP / 2)
    exact = rows[:, K:]
    slack = np.spacing(np.abs(lp[:, K:])).astype(np.float32) / 2  # the decoded value's own fp16 rounding
    assert ((low - slack <= exact) & (exact <= high + slack)).all()
    # tight: plain rows reach below v, guarded rows reach nearly a step above it
    assert ((exact - v)[~last & ~guarded[:, None]] < -0.2).any()
    assert ((exact - v)[~last & guarded[:, None]] > 0.4).any()


def test_logits_to_topk_tail_extends_the_topk_without_changing_it():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(256, 100, generator=g) * torch.logspace(-1, 1.3, 256)[:, None]
    ties = torch.randint(0, 4, (64, 100), generator=g).float()  # many exact ties: the lower class id first
    for z in (logits, ties):
        lp_k, cls_k = logits_to_topk(z, K)
        lp, cls = logits_to_topk(z, K, M)
        assert lp.shape == cls.shape == (z.shape[0], K + M) and lp.dtype == torch.float16
        np.testing.assert_array_equal(bits(lp[:, :K]), bits(lp_k))
        np.testing.assert_array_equal(cls[:, :K].numpy(), cls_k.numpy())
        np.testing.assert_array_equal(cls.numpy(), np.argsort(-z.numpy(), axis=1, kind="stable")[:, : K + M])
        # the tail columns: the decoded codes (docs' rule, ref_codes) of the exact log-probs of those classes
        exact = torch.log_softmax(z.float(), -1).gather(1, cls.long()).numpy()
        anchor = lp[:, K - 1 : K].numpy().astype(np.float64)
        code, _ = ref_codes(exact, K)
        want = (anchor - TAIL_STEP * (code + 0.5)).astype(np.float16)
        np.testing.assert_array_equal(bits(lp[:, K:]), bits(want))
    with pytest.raises(ValueError, match="k \\+ tail <= 100"):
        logits_to_topk(logits, 95, 6)


# ---- export between backends --------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_synthetic(path: Path, m: Manifest) -> None:
    w = create_or_open_writer(path, m)
    for e in range(m.epochs_planned):
        for u in range(num_units(m)):
            w.write_unit(e, u, synthetic_unit(m, e, u))
    w.finalize()


def test_export_keeps_a_format_2_cache_byte_for_byte(tmp_path):
    m = synthetic_manifest(num_samples=301, unit_size=64, epochs=1, num_classes=50, topk=3, tail_classes=5)
    _write_synthetic(tmp_path / "z", m)
    _write_synthetic(tmp_path / "w_direct", m.replace(backend="wds"))
    digest = content_hash(open_cache(tmp_path / "z"))
    assert digest == content_hash(open_cache(tmp_path / "w_direct"))

    r = run_cli("export", str(tmp_path / "z"), "--format", "wds", "--out", str(tmp_path / "w"))
    assert f"content digest {digest} unchanged" in r.stdout + r.stderr
    w = open_cache(tmp_path / "w")
    assert (w.manifest.backend, w.manifest.format_version, w.manifest.tail_classes) == ("wds", 2, 5)
    assert content_hash(w) == digest
    assert w.load_epoch(0).equals(open_cache(tmp_path / "z").load_epoch(0))
    shards = {k: v for k, v in _files(tmp_path / "w").items() if k.endswith(".tar")}
    assert shards and shards == {k: v for k, v in _files(tmp_path / "w_direct").items() if k.endswith(".tar")}

    run_cli("export", str(tmp_path / "w"), "--format", "zarr", "--out", str(tmp_path / "z2"))
    assert content_hash(open_cache(tmp_path / "z2")) == digest
    chunks = {k: v for k, v in _files(tmp_path / "z").items() if k.startswith("e00000/")}
    assert any("/tail_code/c/" in k for k in chunks)
    assert chunks == {k: v for k, v in _files(tmp_path / "z2").items() if k.startswith("e00000/")}


# ---- format 1 caches of the code before format 2 (tests/data/v1_cache, made by commit 16831d6) ----------------


@pytest.fixture
def old_v1(tmp_path) -> dict[str, Path]:
    """A private copy of the committed format 1 caches (nothing may write into tests/data)."""
    return {b: Path(shutil.copytree(V1_DATA / b, tmp_path / b)) for b in ("zarr", "wds")}


def _raw_topk(path: Path, backend: str, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored top-k of an epoch read with zarr / tarfile alone (no kdcache reader)."""
    if backend == "zarr":
        import zarr

        arrays = [zarr.open_array(str(path / f"e{epoch:05d}" / n), mode="r")[:] for n in ("topk_logprob", "topk_class")]
        return arrays[0], arrays[1]
    import io
    import tarfile

    parts: dict[str, list[np.ndarray]] = {"topk_logprob": [], "topk_class": []}
    for shard in sorted((path / f"e{epoch:05d}").glob("u*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                name = m.name.split(".")[1]
                if name in parts:
                    parts[name].append(np.load(io.BytesIO(tar.extractfile(m).read())))
    return np.concatenate(parts["topk_logprob"]), np.concatenate(parts["topk_class"])


@pytest.mark.parametrize("backend", ["zarr", "wds"])
def test_a_format_1_cache_of_the_old_code_reads_as_before(old_v1, backend):
    from kdcache.cli.show import training_targets

    path = old_v1[backend]
    old_hash = json.loads((V1_DATA / "hashes.json").read_text())[backend]
    r = open_cache(path)
    m = r.manifest
    assert (m.format_version, m.tail_classes, m.topk, m.label_width, m.backend) == (1, 0, 3, 3, backend)
    assert r.epochs_complete == [0, 1]
    assert content_hash(r) == old_hash  # the new reader sees exactly the content the old code hashed
    info = cache_info(path)
    assert (info["format_version"], info["tail_classes"], info["topk"]) == (1, 0, 3)
    assert info["content_hash"] == old_hash
    text = run_cli("info", str(path)).stdout
    assert "top-3 of 10 classes (fp16 log-probs)" in text and "tail" not in text
    for e in (1, 0):
        block = r.load_epoch(e)
        raw_lp, raw_cls = _raw_topk(path, backend, e)
        assert block.topk_logprob.shape == (20, 3)
        np.testing.assert_array_equal(bits(block.topk_logprob), bits(raw_lp))
        np.testing.assert_array_equal(block.topk_class, raw_cls)
        # the training targets (the trainer's own code) are the documented reconstruction of the stored rows
        got = training_targets(block.topk_logprob, block.topk_class, m.num_classes)
        p = np.exp(raw_lp.astype(np.float64))
        want = np.repeat(((1 - p.sum(1)) / (m.num_classes - 3))[:, None], m.num_classes, 1)
        np.put_along_axis(want, raw_cls.astype(np.int64), p, 1)
        np.testing.assert_allclose(got, want / want.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    # `show --dense` (epoch 0) gives the same distributions
    out = run_cli("show", str(path), "--json", "--dense", "--slots", "0:20").stdout
    dense = np.asarray([json.loads(x)["probs"] for x in out.splitlines()], np.float32)
    np.testing.assert_array_equal(dense, got)


@pytest.mark.parametrize("backend", ["zarr", "wds"])
def test_a_format_1_cache_written_by_the_new_code_is_byte_identical_to_the_old_codes(backend, tmp_path):
    """Same manifest, same synthetic content: every file (manifest, header, chunks, shards, markers) equal."""
    old = V1_DATA / backend
    m = Manifest.from_json((old / "manifest.json").read_text()).replace(epochs_complete=())
    assert m.format_version == 1 and m.tail_classes == 0
    _write_synthetic(tmp_path / backend, m)
    new = _files(tmp_path / backend)
    assert "tail_classes" not in json.loads(new["manifest.json"])
    assert sorted(new) == sorted(_files(old))
    for name, data in _files(old).items():
        assert new[name] == data, name


# ---- a build with a real teacher ----------------------------------------------------------------------------
CLASSES = 20
V2_ARGS = ("--format-version", "2", "--topk", "3", "--tail-classes", "5")


def peaked_teacher(path: Path, seed: int) -> Path:
    """A 20-class `test_resnet` at a seeded random init with its head scaled up: a random-init teacher is
    nearly uniform (every tail code 0); scaled, its top-8 spans several nats (codes 0..~9)."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=CLASSES)
    with torch.no_grad():
        model.fc.weight.mul_(40.0)
        model.fc.bias.mul_(40.0)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2build")
    data = write_dataset(root / "data", [f"c{i:02d}" for i in range(CLASSES)], per_class=1)  # 20 views an epoch
    return root, data, peaked_teacher(root / "t1.pth", 0), peaked_teacher(root / "t2.pth", 1)


@pytest.fixture(scope="module")
def v2_cache(setup) -> Path:
    root, data, t1, _ = setup
    out = root / "v2"
    run_cli(*tiny_build(data, t1, out, *V2_ARGS))
    return out


def test_a_format_2_build_stores_top_k_plus_tail_and_measures_the_decoded_rows(setup, v2_cache):
    import zarr

    _, _, t1, _ = setup
    r = open_cache(v2_cache)
    m = r.manifest
    assert (m.format_version, m.topk, m.tail_classes, m.label_width) == (2, 3, 5, 8)
    block = r.load_epoch(0)
    assert block.topk_logprob.shape == block.topk_class.shape == (20, 8)
    assert all(len(set(row)) == 8 for row in block.topk_class.tolist())
    codes = zarr.open_array(str(v2_cache / "e00000" / "tail_code"), mode="r")[:]
    assert zarr.open_array(str(v2_cache / "e00000" / "topk_logprob"), mode="r").shape == (20, 3)
    assert codes.shape == (20, 5) and len(np.unique(codes)) >= 4  # the teacher gives the tail several codes

    logits = _replayed_logits(v2_cache, t1)  # the teacher again, on the views re-rendered from their params
    # the stored rows are the teacher's top-(3+5) with its tail quantised
    lp, cls = logits_to_topk(torch.from_numpy(logits), 3, 5)
    np.testing.assert_array_equal(block.topk_class, cls.numpy())
    np.testing.assert_allclose(block.topk_logprob[:, :3].astype(np.float32), lp[:, :3].float().numpy(), atol=2e-3)
    doc = json.loads((v2_cache / "fidelity.json").read_text())
    assert (doc["topk"], doc["tail_classes"], doc["views"]) == (3, 5, 20)
    assert "5 tail classes at 4 bits" in doc["rule"]
    want_out, want_kl = _np_fidelity(logits, 3, tail=5)
    assert doc["outside"]["mean"] == pytest.approx(want_out.mean(), abs=1e-5)
    assert doc["kl"]["mean"] == pytest.approx(want_kl.mean(), rel=1e-3)
    # ...and not the figures of the top-3 alone: those are far off
    v1_out, v1_kl = _np_fidelity(logits, 3)
    assert v1_kl.mean() > 1.5 * want_kl.mean() and v1_out.mean() > want_out.mean() + 0.01
    info = cache_info(v2_cache)
    assert (info["format_version"], info["tail_classes"]) == (2, 5)
    assert "+ the next 5 at 4 bits (format 2 tail)" in run_cli("info", str(v2_cache), "--no-hash").stdout


def test_verify_passes_on_a_format_2_cache_and_catches_a_wrong_tail_code(setup, v2_cache, tmp_path):
    out = run_cli("verify", str(v2_cache), "--views", "20").stdout
    assert out.endswith("OK\n"), out
    # Every view's first tail value moved up one code where it can be (on the grid, still sorted): a code one off
    # is 0.5 nats away, so verify must name nearly every such view, with the tail's message.
    r = open_cache(v2_cache)
    m = r.manifest
    block = r.load_epoch(0)
    anchor = block.topk_logprob[:, 2].astype(np.float32)
    codes = np.rint((anchor - block.topk_logprob[:, 3].astype(np.float32)) / TAIL_STEP - 0.5)
    moved = set(np.flatnonzero(codes >= 1).tolist())
    assert len(moved) >= 10
    bad = tmp_path / "bad"
    w = create_or_open_writer(bad, m.replace(epochs_complete=()))
    for u in range(num_units(m)):
        data = r.read_unit(0, u)
        lp = data.topk_logprob.copy()
        for row in range(data.num_views):
            if u * m.unit_size + row in moved:
                c = codes[u * m.unit_size + row] - 1
                lp[row, 3] = tail_values(lp[row, 2:3], np.array([[c]], np.uint8))[0, 0]
        w.write_unit(0, u, UnitData(**{**data.arrays(), "topk_logprob": lp}))
    w.finalize()
    proc = run_cli("verify", str(bad), "--views", str(m.num_slots), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    pattern = r"MISMATCH epoch 0 slot (\d+) .*outside the bin of its stored 4-bit code"
    named = {int(x) for x in re.findall(pattern, proc.stderr)}
    total = int(re.search(r"FAILED: (\d+) mismatch", proc.stderr).group(1))
    assert named <= moved and len(named) == min(total, 20), proc.stderr  # (the first 20 are listed)
    assert total >= 0.8 * len(moved), (total, len(moved), proc.stderr)


def test_formats_do_not_mix_in_one_cache_but_a_format_2_layer_can_join_a_format_1_cache(setup, v2_cache):
    root, data, t1, t2 = setup
    v1 = root / "v1"
    run_cli(*tiny_build(data, t1, v1, "--format-version", "1"))
    before = content_hash(open_cache(v1))
    for extra in ((), ("--epochs", "2")):  # resume, extend
        proc = run_cli(*tiny_build(data, t1, v1, *V2_ARGS, *extra), check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "differing field(s): format_version, tail_classes" in proc.stderr
    # and the other way: a format 2 cache resumed without --format-version 2
    proc = run_cli(*tiny_build(data, t1, v2_cache, "--format-version", "1"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "differing field(s): format_version, tail_classes" in proc.stderr
    r = open_cache(v1)  # untouched, and readable
    assert (r.manifest.format_version, r.epochs_complete, content_hash(r)) == (1, [0], before)
    assert r.load_epoch(0).topk_logprob.shape == (20, 3) and not (v1 / "layers").exists()

    # another teacher, format 2, on the format 1 cache's views: a layer
    proc = run_cli(*tiny_build(data, t2, None, "--cache", str(v1), *V2_ARGS))
    assert f"added teacher test_resnet to cache {v1}" in proc.stderr
    (layer,) = sorted((v1 / "layers").iterdir())
    first, other = open_cache(v1), open_cache(layer)
    assert content_hash(first) == before
    assert (other.manifest.format_version, other.manifest.tail_classes) == (2, 5)
    a, b = first.load_epoch(0), other.load_epoch(0)
    assert b.topk_logprob.shape == (20, 8)
    for name in ("sample_id", "repeat", "params", "digest"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    layers = cache_info(v1)["layers"]
    assert [(x["topk"], x["tail_classes"]) for x in layers] == [(3, 0), (3, 5)]
    # verify checks each layer with its own teacher, the format 2 one within its tail's bins
    out = run_cli("verify", str(v1), "--views", "20").stdout
    assert out.count("teacher test_resnet") == 2 and out.endswith("OK\n"), out


def test_show_lists_the_tail_apart_from_the_exact_top_k(v2_cache):
    r = open_cache(v2_cache)
    block = r.load_epoch(0)
    views = [
        json.loads(line) for line in run_cli("show", str(v2_cache), "--slots", "0:4", "--json").stdout.splitlines()
    ]
    for v in views:
        s = v["slot"]
        assert [t["class"] for t in v["topk"]] == block.topk_class[s, :3].tolist()
        assert [t["class"] for t in v["tail"]] == block.topk_class[s, 3:].tolist()
        stored = np.exp(block.topk_logprob[s].astype(np.float64))
        np.testing.assert_allclose([t["prob"] for t in v["topk"] + v["tail"]], stored, atol=1e-6)
        assert v["other_mass"] == pytest.approx(max(0.0, 1 - stored.sum()), abs=1e-6)
    text = run_cli("show", str(v2_cache), "--slots", "0:1").stdout
    assert "; tail (4-bit) " in text and text.count("~") == 5


def test_the_registry_does_not_hand_a_format_1_cache_to_a_format_2_build(setup, tmp_path):
    _, data, t1, _ = setup
    root = tmp_path / "reg"
    v1 = ("--format-version", "1")
    run_cli(*tiny_build(data, t1, None, "--cache-root", str(root), *v1))
    for extra in (V2_ARGS, ("--topk", "4", *v1)):
        r = run_cli(*tiny_build(data, t1, None, "--cache-root", str(root), *extra), check=False)
        assert r.returncode != 0 and "reused" not in r.stdout, r.stdout + r.stderr
        assert "as top-3 (format 1)" in r.stderr and "--out DIR" in r.stderr and "Traceback" not in r.stderr
    (entry,) = [e for e in (root).iterdir() if e.is_dir()]
    assert open_cache(entry / "zarr").manifest.format_version == 1  # what was stored is untouched
    run_cli(*tiny_build(data, t1, None, "--cache-root", str(root), *v1))  # the same command still reuses it


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("--topk", "18", "--format-version", "2"),
            "--topk 18 + the default --tail-classes 10 exceed the teacher's 20",
        ),
        (("--format-version", "2", "--topk", "20"), "already stores all 20 classes"),
        (("--topk", "21"), "--topk 21 exceeds the teacher's 20 classes"),
    ],
)
def test_label_widths_beyond_the_teachers_classes_are_refused_naming_the_options(setup, tmp_path, extra, message):
    _, data, t1, _ = setup
    r = run_cli(*tiny_build(data, t1, tmp_path / "c", *extra), check=False)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_a_layer_of_a_newer_format_is_skipped_not_fatal(setup, v2_cache, tmp_path, caplog):
    from kdcache.teacher_cache.store import open_layers

    c = tmp_path / "c"
    shutil.copytree(v2_cache, c)
    layer = c / "layers" / "future-0000"
    layer.mkdir(parents=True)
    doc = json.loads((c / "manifest.json").read_text())
    (layer / "manifest.json").write_text(json.dumps({**doc, "format_version": 99}))
    (layer / "build.json").write_text(json.dumps({**doc, "format_version": 99}))
    with caplog.at_level("WARNING", logger="kdcache"):
        layers = open_layers(c)
    assert [lid for lid, _ in layers] == [None] and "future-0000 skipped" in caplog.text
    assert "newer than this kdcache" in caplog.text
