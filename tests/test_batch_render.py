"""Batch rendering (decode once, render many) equals per-pair rendering, view for view."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdcache.views import PairBatchDataset, PairDataset, ReplayError, ViewEngine, collate_pairs, keep_collated
from kdcache.views.params import MixMode, MixParams
from kdcache.views.render import mix_pair, mix_pair_into

SEED = 5
EPOCH = 1


class CountingSource:
    """Wraps an ImageSource and counts ``open`` calls per sample id."""

    def __init__(self, source):
        self.source = source
        self.opened: Counter[int] = Counter()

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def open(self, sample_id: int):
        self.opened[sample_id] += 1
        return self.source.open(sample_id)


@pytest.fixture
def engine(make_engine) -> ViewEngine:
    return make_engine(seed=SEED)


def _with_repeats(engine: ViewEngine, epoch: int) -> list[int]:
    """All pairs of the epoch, in an order that keeps a sample's repeats in the same batches."""
    pairs = list(range(engine.plan(epoch).num_pairs))
    assert len(set(engine.plan(epoch).sample_ids.tolist())) < engine.plan(epoch).num_slots  # R > 1
    return pairs


def _records(engine: ViewEngine, epoch: int) -> np.ndarray:
    plan = engine.plan(epoch)
    out = np.zeros((plan.num_slots, engine.record_width), np.uint16)
    for pair in range(plan.num_pairs):
        out[2 * pair : 2 * pair + 2] = engine.render_pair(epoch, pair).records
    return out


def _assert_same_pair(a, b) -> None:
    assert (a.epoch, a.pair) == (b.epoch, b.pair)
    assert a.params == b.params
    for field in ("sample_ids", "repeats", "labels", "images", "records", "digests"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)


def _assert_same_batch(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    assert got["epoch"] == want["epoch"]
    assert isinstance(got["images"], torch.Tensor) and got["images"].dtype == torch.uint8
    for key in want:
        if key == "epoch":
            continue
        x, y = got[key], want[key]
        if isinstance(y, torch.Tensor):
            assert torch.equal(x, y), key
        else:
            assert x.dtype == y.dtype, key
            np.testing.assert_array_equal(x, y, err_msg=key)


@pytest.mark.parametrize("replay", [False, True])
def test_render_pairs_equals_render_pair(engine, make_engine, replay):
    pairs = _with_repeats(engine, EPOCH)
    records = _records(engine, EPOCH) if replay else None
    fresh = make_engine(seed=SEED)
    batch_rec = None if records is None else records[np.ravel([[2 * p, 2 * p + 1] for p in pairs])]
    got = fresh.render_pairs(EPOCH, pairs, batch_rec)
    for pair, r in zip(pairs, got, strict=True):
        _assert_same_pair(r, engine.render_pair(EPOCH, pair))


@pytest.mark.parametrize("replay", [False, True])
def test_render_batch_equals_collated_pairs(engine, replay):
    plan = engine.plan(EPOCH)
    records = _records(engine, EPOCH) if replay else None
    # Repeats of the same pairs, in an odd order: the batch holds several views of each sample.
    pairs = [3, 0, 3, 1, plan.num_pairs - 1, 0, 2]
    rec = None if records is None else records[np.ravel([[2 * p, 2 * p + 1] for p in pairs])]
    got = engine.render_batch(EPOCH, pairs, rec)
    want = collate_pairs(
        [engine.render_pair(EPOCH, p, None if records is None else records[2 * p : 2 * p + 2]) for p in pairs]
    )
    _assert_same_batch(got, want)


def test_each_distinct_sample_is_decoded_once_per_batch(image_folder):
    from conftest import augment_config

    source = CountingSource(image_folder.source())
    engine = ViewEngine(source, augment_config(), SEED)
    plan = engine.plan(EPOCH)
    pairs = np.arange(plan.num_pairs)
    slots = np.stack([2 * pairs, 2 * pairs + 1], 1).ravel()
    views_per_sample = Counter(plan.sample_ids[slots].tolist())
    assert max(views_per_sample.values()) > 1  # repeated augmentation: the test means something
    engine.render_batch(EPOCH, pairs)
    assert source.opened == Counter(dict.fromkeys(views_per_sample, 1))
    source.opened.clear()
    engine.render_pairs(EPOCH, pairs)
    assert source.opened == Counter(dict.fromkeys(views_per_sample, 1))
    source.opened.clear()
    for pair in pairs.tolist():  # per pair: once per view
        engine.render_pair(EPOCH, pair)
    assert source.opened == views_per_sample


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("replay", [False, True])
def test_dataloader_over_pair_batches_equals_per_pair_rendering(engine, num_workers, replay):
    plan = engine.plan(EPOCH)
    records = _records(engine, EPOCH) if replay else None
    batches = [list(range(i, min(i + 3, plan.num_pairs))) for i in range(0, plan.num_pairs, 3)]
    ds = PairBatchDataset(engine, EPOCH, batches, records=records)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=keep_collated)
    per_pair = PairDataset(engine, EPOCH, records=records)
    got = list(loader)
    assert len(got) == len(batches)
    for batch, pairs in zip(got, batches, strict=True):
        _assert_same_batch(batch, collate_pairs([per_pair[p] for p in pairs]))


def test_batch_replay_rejects_records_of_the_wrong_shape(engine):
    records = _records(engine, EPOCH)
    with pytest.raises(ReplayError, match="shape"):
        engine.render_batch(EPOCH, [0, 1], records[:3])
    with pytest.raises(ReplayError, match="shape"):
        engine.render_pairs(EPOCH, [0, 1], records[:4, :-1])


def test_batch_refuses_pairs_outside_the_epoch(engine):
    n = engine.plan(EPOCH).num_pairs
    for pairs in ([0, n], [-1]):
        with pytest.raises(IndexError, match="out of range"):
            engine.render_batch(EPOCH, pairs)
        with pytest.raises(IndexError, match="out of range"):
            engine.render_pairs(EPOCH, pairs)
    with pytest.raises(ValueError, match="at least one pair"):
        engine.render_batch(EPOCH, [])


@pytest.mark.parametrize(
    "mix",
    [MixParams(MixMode.NONE, 1.0), MixParams(MixMode.CUTMIX, 0.7, (3, 20, 5, 40))]
    + [MixParams(MixMode.MIXUP, q / 65535) for q in (0, 1, 13107, 32768, 65534, 65535)],
)
def test_mix_in_place_equals_mix_pair(mix):
    g = np.random.default_rng(0)
    a, b = (g.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2))
    out = np.empty((2, 48, 48, 3), np.uint8)
    mix_pair_into(a, b, mix, out)
    want = mix_pair(a, b, mix)
    np.testing.assert_array_equal(out[0], want[0])
    np.testing.assert_array_equal(out[1], want[1])
