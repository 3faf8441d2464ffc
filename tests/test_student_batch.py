"""TrainBatch, slot splitting, the synthetic source, and the adapter from the view engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kdcache.data import ImageFolderSource
from kdcache.recipe import AugmentConfig
from kdcache.student.batch import (
    BatchError,
    BatchSource,
    TrainBatch,
    partner_labels,
    process_slots,
    train_batch_from_collated,
)
from kdcache.testing.synthetic_batches import SyntheticBatchSource
from kdcache.views.engine import PairDataset, ViewEngine, collate_pairs


def _batch(b=4, **kw):
    base = {
        "images": torch.zeros(b, 8, 8, 3, dtype=torch.uint8),
        "y_a": torch.arange(b),
        "y_b": torch.arange(b) ^ 1,  # partner within the pair
        "lam": torch.full((b,), 0.5),
    }
    base.update(kw)
    return TrainBatch(**base)


def test_train_batch_validation():
    _batch().validate_pairs()
    with pytest.raises(BatchError, match="even"):
        _batch(3, y_b=torch.arange(3))
    with pytest.raises(BatchError, match="uint8"):
        _batch(images=torch.zeros(4, 8, 8, 3))
    with pytest.raises(BatchError, match="y_a"):
        _batch(y_a=torch.arange(4, dtype=torch.int32))
    with pytest.raises(BatchError, match="come together"):
        _batch(topk_logprob=torch.zeros(4, 2, dtype=torch.float16))
    with pytest.raises(BatchError, match="partner"):
        _batch(y_b=torch.arange(4)).validate_pairs()
    with pytest.raises(BatchError, match="same lam"):
        _batch(lam=torch.tensor([0.1, 0.2, 0.5, 0.5])).validate_pairs()


def test_process_slots_split_is_world_size_independent():
    G = 12
    for step in range(3):
        one = list(process_slots(step, G))
        assert one == list(range(step * G, (step + 1) * G))
        for world in (2, 3, 6):
            parts = [process_slots(step, G, r, world) for r in range(world)]
            assert [s for p in parts for s in p] == one
            assert all(p.start % 2 == 0 for p in parts)
    with pytest.raises(BatchError):
        process_slots(0, 12, 0, 4)  # 3 views per process: a pair would straddle two processes


def test_synthetic_source_is_deterministic_and_world_size_independent():
    src = SyntheticBatchSource(num_slots=40, global_batch=8, image_size=16, num_classes=5, seed=3, topk=3)
    assert isinstance(src, BatchSource)
    assert src.steps_per_epoch == 5
    a = list(src.epoch_batches(1))
    b = list(src.epoch_batches(1, start_step=2))
    assert len(a) == 5 and len(b) == 3
    for x, y in zip(a[2:], b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.topk_logprob, y.topk_logprob)
    assert not torch.equal(a[0].images, next(src.epoch_batches(2)).images)  # epochs differ
    halves = [SyntheticBatchSource(40, 8, 16, 5, seed=3, rank=r, world_size=2, topk=3).batch(1, 2) for r in (0, 1)]
    for name in ("images", "y_a", "y_b", "lam", "topk_logprob", "topk_class", "slots"):
        torch.testing.assert_close(torch.cat([getattr(h, name) for h in halves]), getattr(a[2], name))
    for batch in a:
        batch.validate_pairs()
        assert batch.topk_logprob.dtype == torch.float16 and batch.topk_class.dtype == torch.int16


def test_partner_labels():
    assert partner_labels(np.array([1, 2, 3, 4])).tolist() == [2, 1, 4, 3]
    assert partner_labels(torch.tensor([1, 2, 3, 4])).tolist() == [2, 1, 4, 3]


def test_adapter_from_the_view_engine(tmp_path):
    g = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / f"class{c}").mkdir()
        for i in range(3):
            arr = g.integers(0, 256, size=(30 + 7 * i, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / f"class{c}" / f"{i}.png")
    aug = AugmentConfig(image_size=24, repeats=1)
    engine = ViewEngine(ImageFolderSource(tmp_path), aug, seed=1)
    ds = PairDataset(engine, epoch=0)
    collated = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_pairs)))
    k = 2
    topk_lp = torch.zeros(4, k, dtype=torch.float16)
    topk_cls = torch.zeros(4, k, dtype=torch.int16)
    batch = train_batch_from_collated(collated, engine.n_ops, aug.image_size, topk_lp, topk_cls)
    batch.validate_pairs()
    assert batch.images.shape == (4, 24, 24, 3)
    assert batch.y_a.tolist() == collated["labels"].tolist()
    pairs = [ds[i] for i in range(2)]
    lams = [p.params[j].mix.lam for p in pairs for j in (0, 1)]
    np.testing.assert_array_equal(batch.lam.numpy(), np.array(lams, dtype=np.float32))
    # The lam carried by collate_pairs is exactly what decoding the stored records gives.
    without = {key: v for key, v in collated.items() if key != "lam"}
    decoded = train_batch_from_collated(without, engine.n_ops, aug.image_size, topk_lp, topk_cls)
    assert torch.equal(decoded.lam, batch.lam)
    assert torch.equal(batch.images, torch.from_numpy(np.concatenate([p.images for p in pairs])))
