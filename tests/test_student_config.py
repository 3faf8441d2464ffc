"""The training part of the recipe: defaults, YAML round trip, validation, batch split."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from kdcache.recipe import Recipe, RecipeError, TrainConfig, load_recipe


def test_seed_defaults_are_the_design_recipe():
    t = Recipe().train
    assert (t.opt, t.lr, t.weight_decay, t.opt_eps, t.clip_grad, t.clip_mode) == ("lamb", 5e-3, 0.02, 1e-6, 1.0, "norm")
    assert (t.global_batch, t.epochs, t.warmup_epochs, t.cosine_epochs, t.lr_min, t.cooldown_epochs) == (
        1536,
        610,
        5,
        600,
        5e-5,
        10,
    )
    # SuperGradients' EMA: decay 0.9999 with its exponential ramp (beta 15), not timm's warm-up
    assert (t.ema_decay, t.ema_warmup, t.ema_ramp, t.ema_beta, t.average_top) == (0.9999, False, "exp", 15.0, 10)
    assert (t.eval_interpolation, t.eval_crop_pct) == ("bilinear", 224 / 256)  # SG's 81.91%: bilinear 256 -> 224
    assert (t.kd_weight, t.ce_weight, t.temperature, t.label_smoothing) == (0.8, 0.2, 1.0, 0.1)
    assert (t.drop_path_rate, t.eval_crop_pct) == (0.0, 0.875)


def test_yaml_round_trip_and_preset():
    r = Recipe().replace_train(model="test_resnet", opt_betas=(0.8, 0.99), clip_grad=None)
    assert Recipe.from_dict(yaml.safe_load(r.dump_yaml())) == r
    assert load_recipe("seed") == Recipe()


def test_partial_train_section_keeps_defaults():
    r = Recipe.from_dict({"train": {"lr": 1e-3}})
    assert r.train == dataclasses.replace(TrainConfig(), lr=1e-3)


def test_unknown_train_key_is_refused():
    with pytest.raises(RecipeError, match="unknown key"):
        Recipe.from_dict({"train": {"learning_rate": 1e-3}})


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"epochs": 300}, "cosine_epochs \\+ cooldown_epochs"),
        ({"global_batch": 15}, "even"),
        ({"warmup_epochs": 600}, "warmup_epochs"),
        ({"lr_min": 1.0}, "lr_min"),
        ({"kd_weight": 0.0, "ce_weight": 0.0}, "both be 0"),
        ({"eval_crop_pct": 1.5}, "eval_crop_pct"),
        ({"clip_mode": "max"}, "clip_mode"),
        ({"temperature": 0.0}, "temperature"),
        ({"average_top": 0}, "average_top"),
    ],
)
def test_invalid_values(changes, match):
    with pytest.raises(RecipeError, match=match):
        dataclasses.replace(TrainConfig(), **changes)


def test_per_process_batch():
    t = TrainConfig()
    assert t.per_process_batch(1) == 1536
    assert t.per_process_batch(8) == 192
    with pytest.raises(RecipeError, match="not divisible"):
        t.per_process_batch(7)
    with pytest.raises(RecipeError, match="odd"):
        dataclasses.replace(t, global_batch=6).per_process_batch(2)


def test_yaml_1_1_exponent_floats_and_type_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 5e-3\n  lr_min: 5e-5\n  clip_grad: null\n")
    t = load_recipe(path).train
    assert (t.lr, t.lr_min, t.clip_grad) == (5e-3, 5e-5, None)
    assert isinstance(Recipe.from_dict({"train": {"weight_decay": 0}}).train.weight_decay, float)
    for bad in ({"epochs": "many"}, {"epochs": 1.5}, {"lr": "fast"}, {"ema_warmup": "yes"}, {"model": 3}):
        with pytest.raises(RecipeError, match="must be"):
            Recipe.from_dict({"train": bad})
