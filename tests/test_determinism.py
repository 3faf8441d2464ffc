"""Views are a pure function of (seed, epoch, slot): across processes, workers, access orders, replays."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdcache.views import PairDataset, ReplayError, ViewEngine, collate_pairs
from kdcache.views import params as P
from kdcache.views.params import MixMode

SEED = 5
EPOCHS = (0, 2)


def _all_pairs(engine: ViewEngine) -> dict[tuple[int, int], tuple[list[int], list[list[int]]]]:
    out = {}
    for epoch in EPOCHS:
        for pair in range(engine.plan(epoch).num_pairs):
            r = engine.render_pair(epoch, pair)
            out[(epoch, pair)] = ([int(d) for d in r.digests], r.records.tolist())
    return out


@pytest.fixture(scope="module")
def reference(make_engine):
    """Digests and records of every pair of two epochs, rendered in order in this process."""
    return _all_pairs(make_engine(seed=SEED))


# ---- replay ---------------------------------------------------------------------------------


def test_replaying_records_gives_the_same_views(make_engine, reference):
    sampler, replayer = make_engine(seed=SEED), make_engine(seed=SEED)  # replay on a fresh engine
    for epoch in EPOCHS:
        for pair in range(sampler.plan(epoch).num_pairs):
            r = sampler.render_pair(epoch, pair)
            assert ([int(d) for d in r.digests], r.records.tolist()) == reference[(epoch, pair)]
            again = replayer.render_pair(epoch, pair, r.records.copy())
            assert again.params == r.params
            np.testing.assert_array_equal(again.images, r.images)
            np.testing.assert_array_equal(again.digests, r.digests)
            np.testing.assert_array_equal(again.records, r.records)
            assert replayer.decode_pair(r.records) == r.params


def test_records_decode_to_the_rendered_params(make_engine):
    engine = make_engine(seed=SEED)
    for pair in range(engine.plan(0).num_pairs):
        r = engine.render_pair(0, pair)
        assert r.records.dtype == np.uint16 and r.records.shape == (2, engine.record_width)
        for k in range(2):
            assert P.decode(r.records[k], engine.n_ops, engine.augment.image_size) == r.params[k]
        assert engine.sample_pair(0, pair) == r.params  # header-only sampling agrees with rendering


def test_a_changed_record_changes_the_digest(make_engine):
    engine = make_engine(seed=SEED)
    r = engine.render_pair(0, 0)
    rec = r.records.copy()
    rec[:, 4] ^= 1  # toggle hflip on both views
    flipped = engine.render_pair(0, 0, rec)
    assert (flipped.digests != r.digests).all()


def test_replay_rejects_bad_records(make_engine):
    engine = make_engine(seed=SEED)
    plan = engine.plan(0)
    # Find a pair with a CutMix and one with a Mixup.
    pairs = {engine.render_pair(0, p).params[0].mix.mode: engine.render_pair(0, p) for p in range(plan.num_pairs)}
    some = next(iter(pairs.values()))
    with pytest.raises(ReplayError, match="shape"):
        engine.render_pair(0, some.pair, some.records[:1])
    with pytest.raises(ReplayError, match="shape"):
        engine.render_pair(0, some.pair, some.records[:, :-1])
    bad = some.records.copy()
    bad[1, 4] |= 1 << 5  # unknown flag bit -> ParamDecodeError, surfaced as ReplayError
    with pytest.raises(ReplayError, match="flag"):
        engine.render_pair(0, some.pair, bad)
    bad = some.records.copy()
    bad[0, 2] = 60000  # a crop taller than the source image: refused, not rendered padded
    with pytest.raises(ValueError, match="exceeds"):
        engine.render_pair(0, some.pair, bad)
    if MixMode.MIXUP in pairs:
        bad = pairs[MixMode.MIXUP].records.copy()
        bad[1, engine.record_width - 5] ^= 7  # the two views disagree on lambda
        with pytest.raises(ReplayError, match="disagree"):
            engine.render_pair(0, pairs[MixMode.MIXUP].pair, bad)


def test_replay_through_pair_dataset_records(make_engine, reference):
    engine = make_engine(seed=SEED)
    recs = np.concatenate([np.array(reference[(0, p)][1], dtype=np.uint16) for p in range(engine.plan(0).num_pairs)])
    ds = PairDataset(engine, 0, records=recs)
    for i in range(len(ds)):
        assert [int(d) for d in ds[i].digests] == reference[(0, i)][0]


# ---- same views everywhere ------------------------------------------------------------------


def test_engine_seed_matters_and_instances_agree(make_engine, reference):
    assert _all_pairs(make_engine(seed=SEED)) == reference
    other = _all_pairs(make_engine(seed=SEED + 1))
    assert all(other[k][0] != reference[k][0] for k in reference if k in other)


def test_global_random_state_does_not_matter(make_engine, reference):
    engine = make_engine(seed=SEED)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    for (epoch, pair), (digests, _) in reference.items():
        assert [int(d) for d in engine.render_pair(epoch, pair).digests] == digests
        random.random()
        np.random.rand()


_SCRIPT = """
import json, os, random, sys
import numpy as np
random.seed(os.getpid()); np.random.seed(os.getpid() % 2**32)  # must not matter
from kdcache.data import ImageFolderSource
from kdcache.recipe import AugmentConfig
from kdcache.views import ViewEngine
engine = ViewEngine(ImageFolderSource(sys.argv[1]), AugmentConfig(image_size=int(sys.argv[2])), int(sys.argv[3]))
out = []
for epoch in (0, 2):
    # Visit the pairs in a different order than the parent process does.
    for pair in reversed(range(engine.plan(epoch).num_pairs)):
        r = engine.render_pair(epoch, pair)
        out.append([epoch, pair, [int(d) for d in r.digests], r.records.tolist()])
print(json.dumps(out))
"""


def test_a_separate_process_renders_identical_views(image_folder, make_engine, reference):
    """A fresh interpreter (other hash seed, other global RNG seeds, other visiting order) agrees with
    this one. One child only: importing torch + timm costs several CPU seconds per process."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    size = make_engine().augment.image_size
    args = [sys.executable, "-c", _SCRIPT, str(image_folder.root), str(size), str(SEED)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    child = {(e, q): (d, r) for e, q, d, r in json.loads(proc.stdout)}
    assert child == reference


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers_render_identical_views(make_engine, reference, num_workers):
    engine = make_engine(seed=SEED)
    for epoch in EPOCHS:
        ds = PairDataset(engine, epoch)
        loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=num_workers, collate_fn=collate_pairs)
        seen = []
        for batch in loader:
            assert batch["epoch"] == epoch
            images = batch["images"]
            assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8
            size = engine.augment.image_size
            assert images.shape[1:] == (size, size, 3)
            n = len(batch["pairs"])
            assert images.shape[0] == 2 * n == len(batch["digests"]) == len(batch["slots"])
            np.testing.assert_array_equal(
                batch["slots"], np.stack([2 * batch["pairs"], 2 * batch["pairs"] + 1], 1).ravel()
            )
            for j, pair in enumerate(batch["pairs"].tolist()):
                digests, records = reference[(epoch, pair)]
                assert [int(d) for d in batch["digests"][2 * j : 2 * j + 2]] == digests
                assert batch["records"][2 * j : 2 * j + 2].tolist() == records
            plan = engine.plan(epoch)
            np.testing.assert_array_equal(batch["sample_ids"], plan.sample_ids[batch["slots"]])
            np.testing.assert_array_equal(batch["repeats"], plan.repeats[batch["slots"]])
            seen += batch["pairs"].tolist()
        assert seen == list(range(plan.num_pairs))


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_access_order_does_not_matter(make_engine, reference, order):
    engine = make_engine(seed=SEED)
    for epoch in EPOCHS:
        n = engine.plan(epoch).num_pairs
        pairs = list(range(n))[::-1] if order == "reversed" else np.random.default_rng(1).permutation(n).tolist()
        ds = PairDataset(engine, epoch, pairs=pairs)
        got = {}
        for i in range(len(ds)):
            r = ds[i]
            assert r.pair == pairs[i]
            got[r.pair] = ([int(d) for d in r.digests], r.records.tolist())
        # A second, interleaved pass (pair p of this epoch, then of another epoch) changes nothing.
        for p in pairs[: n // 2]:
            engine.render_pair(1, p % engine.plan(1).num_pairs)
            assert [int(d) for d in engine.render_pair(epoch, p).digests] == got[p][0]
        assert got == {p: reference[(epoch, p)] for p in range(n)}
