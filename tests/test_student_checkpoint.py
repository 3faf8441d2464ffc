"""Atomic checkpoint writes, uniform averaging, the best-N keeper, EMA behaviour."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from torch import nn

from kdcache.recipe import TrainConfig
from kdcache.student import checkpoint as ck
from kdcache.student.best import BestCheckpoints
from kdcache.student.ema import ExpRampEma, create_ema, set_total_updates


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _state(seed: int, batches: int) -> dict[str, torch.Tensor]:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    torch.manual_seed(seed)
    for p in net.parameters():
        nn.init.normal_(p)
    net.train()
    for _ in range(batches):  # moves running stats and num_batches_tracked
        net(torch.randn(5, 3))
    return net.state_dict()


def test_save_and_load_round_trip(tmp_path):
    obj = {"format": ck.CHECKPOINT_FORMAT, "state_dict": _state(0, 1), "config": {"a": [1, 2], "b": None}}
    ck.save_atomic(obj, tmp_path / "x.pt")
    back = ck.load_checkpoint(tmp_path / "x.pt")
    assert back["config"] == obj["config"]
    for k, v in obj["state_dict"].items():
        assert torch.equal(back["state_dict"][k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_failing_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_atomic({"format": ck.CHECKPOINT_FORMAT, "epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def half_then_fail(obj, f, *a, **kw):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half a file reaches the disk ...
        raise OSError("disk full")  # ... then the write dies

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ck.save_atomic({"format": ck.CHECKPOINT_FORMAT, "epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    back = ck.load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_load_errors(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="cannot read"):
        ck.load_checkpoint(tmp_path / "bad.pt")


def test_average_is_the_elementwise_mean(tmp_path):
    states = [_state(s, b) for s, b in ((0, 1), (1, 3), (2, 2))]
    paths = []
    for i, sd in enumerate(states):
        paths.append(ck.save_atomic({"format": ck.CHECKPOINT_FORMAT, "state_dict": sd}, tmp_path / f"{i}.pt"))
    avg = ck.average_checkpoints(paths)
    assert set(avg) == set(states[0])
    for k, v in avg.items():
        stacked = torch.stack([sd[k] for sd in states])
        assert v.dtype == states[0][k].dtype
        if v.is_floating_point():
            assert torch.equal(v, stacked.double().mean(0).float())
            torch.testing.assert_close(v, stacked.mean(0))
        else:  # num_batches_tracked: the most-trained count
            assert torch.equal(v, stacked.max(0).values)
    assert int(avg["1.num_batches_tracked"]) == 3
    # the average of one checkpoint is itself; bare state dicts work too
    ck.save_atomic(states[1], tmp_path / "bare.pt")
    one = ck.average_checkpoints([tmp_path / "bare.pt"])
    assert all(torch.equal(one[k], states[1][k]) for k in one)


def test_average_refuses_mismatched_checkpoints(tmp_path):
    a, b = _state(0, 1), _state(1, 1)
    b["extra"] = torch.zeros(1)
    ck.save_atomic(a, tmp_path / "a.pt")
    ck.save_atomic(b, tmp_path / "b.pt")
    with pytest.raises(ck.CheckpointError, match="different keys"):
        ck.average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    with pytest.raises(ck.CheckpointError, match="no checkpoints"):
        ck.average_checkpoints([])


def test_best_keeper_ranks_prunes_and_restores(tmp_path):
    best = BestCheckpoints(tmp_path / "best", keep=2)
    scores = {1: 10.0, 2: 30.0, 3: 20.0, 4: 30.0, 5: 5.0}
    dropped_all = []
    for epoch, score in scores.items():
        dropped = best.consider(epoch, score, lambda e=epoch: {"state_dict": {"e": torch.tensor(e)}})
        dropped_all += dropped
        for p in dropped:
            p.unlink()
    # ties go to the later epoch; epoch 5 never qualified
    assert [(e.epoch, e.score) for e in best.entries] == [(4, 30.0), (2, 30.0)]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["ema_epoch0002.pt", "ema_epoch0004.pt"]
    assert sorted(p.name for p in dropped_all) == ["ema_epoch0001.pt", "ema_epoch0003.pt"]
    # a stray file (crash between writing a best file and the checkpoint that lists it) is pruned
    state = best.state_dict()
    (tmp_path / "best" / "ema_epoch0006.pt").write_bytes(b"x")
    again = BestCheckpoints(tmp_path / "best", keep=2)
    again.load_state_dict(state)
    assert again.entries == best.entries
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["ema_epoch0002.pt", "ema_epoch0004.pt"]


def test_ema_tracks_but_differs_from_the_model():
    cfg = TrainConfig(ema_decay=0.9998, ema_warmup=True, ema_ramp="none")  # timm's warm-up
    model = _net(0)
    model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    ema = create_ema(model, cfg)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 6):
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6)).square().mean().backward()
        opt.step()
        ema.update(model, step=step)
        if step == 1:  # warm-up: the first update copies the model (decay 0)
            for k, v in model.state_dict().items():
                assert torch.equal(ema.module.state_dict()[k], v)
    w_model, w_ema, w0 = model[0].weight, ema.module[0].weight, start["0.weight"]
    assert not torch.equal(w_ema, w_model) and not torch.equal(w_ema, w0)
    # strictly between the start and the model's current weights, on average
    assert 0 < (w_ema - w0).norm() < (w_model - w0).norm()
    assert ema.get_decay(10**9) == cfg.ema_decay
    assert create_ema(model, dataclasses.replace(cfg, ema_warmup=False)).get_decay(2) == cfg.ema_decay


def test_seed_ema_follows_super_gradients_exp_ramp():
    """The seed's EMA decays as SuperGradients' ExpDecay: at its 0-based optimiser step
    s = epoch * steps_per_epoch + batch of total = steps_per_epoch * max_epochs, decay * (1 - exp(-s / total * beta))
    (super_gradients/training/utils/ema_decay_schedules.py, called from sg_trainer's _backward_step)."""
    cfg = TrainConfig()  # the seed preset's defaults: 0.9999, ramp exp, beta 15
    model = _net(0)
    model(torch.randn(2, 3, 6, 6))
    ema = create_ema(model, cfg)
    assert isinstance(ema, ExpRampEma)
    steps_per_epoch, epochs = 7, 3
    set_total_updates(ema, steps_per_epoch * epochs)
    u = 0
    for epoch in range(epochs):
        for batch in range(steps_per_epoch):
            u += 1  # the trainer's step: updates done, this one included
            s, total = epoch * steps_per_epoch + batch, steps_per_epoch * epochs
            assert ema.get_decay(u) == pytest.approx(0.9999 * (1 - np.exp(-s / total * 15.0)), rel=1e-12)
    assert ema.get_decay(1) == 0.0  # the first update copies the model
    assert 0.9999 * 0.7 < ema.get_decay(total // 10 + 1) < 0.9999 * 0.8  # 1 - e^-1.5 = 0.777 at 10% of training

    # ...and update() applies that decay to the weights
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model, step=5)
    d = ema.get_decay(5)
    assert torch.allclose(ema.module[0].weight, d * before + (1 - d) * model[0].weight, atol=1e-6)


def test_ema_ramp_and_timm_warmup_are_exclusive():
    with pytest.raises(ValueError, match="ema_ramp: none"):
        TrainConfig(ema_warmup=True)  # the seed's ramp is exp: asking for timm's too is refused
    assert create_ema(_net(0), TrainConfig(ema_ramp="none")).get_decay(3) == 0.9999  # constant
