"""The learning rate at chosen updates equals the recipe's (warm-up, cosine, cool-down)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kdcache.recipe import TrainConfig
from kdcache.student.optim import create_optimizer
from kdcache.student.schedule import create_scheduler, lr_at

U = 8  # updates per epoch (even: the cosine midpoint falls on an update)


def _sched(cfg: TrainConfig):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = create_optimizer(model, cfg)
    return opt, create_scheduler(opt, cfg, U)


def _lr_after_step_update(opt, sched, t: int) -> float:
    sched.step_update(t)
    lrs = {g["lr"] for g in opt.param_groups}
    assert len(lrs) == 1  # decay / no-decay groups share the schedule
    return lrs.pop()


def test_seed_schedule_key_points():
    cfg = TrainConfig()
    opt, sched = _sched(cfg)
    assert opt.param_groups[0]["lr"] == cfg.warmup_lr  # before the first update
    assert _lr_after_step_update(opt, sched, 0) == cfg.warmup_lr
    # half-way through warm-up: linear
    half = (cfg.warmup_lr + cfg.lr) / 2
    assert _lr_after_step_update(opt, sched, int(2.5 * U)) == pytest.approx(half, rel=1e-12)
    # end of warm-up: exactly the peak lr
    assert _lr_after_step_update(opt, sched, 5 * U) == pytest.approx(cfg.lr, rel=1e-12, abs=0)
    # middle of the cosine: (lr + lr_min) / 2
    mid = (5 + 595 / 2) * U
    assert mid == int(mid)
    assert _lr_after_step_update(opt, sched, int(mid)) == pytest.approx((cfg.lr + cfg.lr_min) / 2, rel=1e-12)
    # from epoch 600 to the last update of epoch 609: lr_min
    for t in (600 * U, 600 * U + 1, 605 * U, 610 * U - 1):
        assert _lr_after_step_update(opt, sched, t) == cfg.lr_min
    # just before epoch 600 the cosine is still (barely) above lr_min
    assert _lr_after_step_update(opt, sched, 600 * U - 1) > cfg.lr_min


def test_scheduler_matches_closed_form_everywhere():
    cfg = TrainConfig()
    opt, sched = _sched(cfg)
    prev = math.inf
    for t in range(0, cfg.epochs * U, 13):
        lr = _lr_after_step_update(opt, sched, t)
        assert lr == pytest.approx(lr_at(cfg, t / U), rel=1e-12, abs=1e-18)
        if t >= cfg.warmup_epochs * U:
            assert lr <= prev
            prev = lr


def test_short_schedule_without_warmup_or_cooldown():
    cfg = dataclasses.replace(TrainConfig(), epochs=3, cosine_epochs=3, warmup_epochs=0, cooldown_epochs=0)
    opt, sched = _sched(cfg)
    assert _lr_after_step_update(opt, sched, 0) == cfg.lr
    assert _lr_after_step_update(opt, sched, 3 * U - 1) == pytest.approx(lr_at(cfg, (3 * U - 1) / U), rel=1e-12)


def test_no_weight_decay_on_norm_and_bias():
    cfg = TrainConfig()
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = create_optimizer(model, cfg)
    by_wd = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert by_wd == {0.0: 4 + 4 + 4, cfg.weight_decay: 12}  # bias + BN weight/bias vs the Linear weight
    assert type(opt).__name__ == "Lamb"
    assert opt.defaults["max_grad_norm"] is None  # clipping is the trainer's, after AMP un-scaling
    assert opt.defaults["eps"] == cfg.opt_eps
