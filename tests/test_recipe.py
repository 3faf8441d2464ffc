"""Recipes: the seed preset round-trips through YAML; malformed recipes raise RecipeError."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from kdcache.recipe import AugmentConfig, Recipe, RecipeError, load_recipe, preset_names


def test_seed_preset_is_the_default_recipe():
    seed = load_recipe("seed")
    assert seed == load_recipe(None)
    assert seed.name == "seed"
    assert seed.augment == AugmentConfig()
    a = seed.augment
    # The published seed recipe (docs/recipes.md).
    assert (a.image_size, a.scale, a.interpolation, a.hflip) == (224, (0.08, 1.0), "random", 0.5)
    assert a.ratio == pytest.approx((3 / 4, 4 / 3), abs=0)
    assert (a.auto_augment, a.mixup_alpha, a.cutmix_alpha, a.mix_prob, a.switch_prob, a.repeats) == (
        "rand-m7-mstd0.5",
        0.2,
        1.0,
        1.0,
        0.5,
        3,
    )
    assert "seed" in preset_names()


def test_yaml_round_trip_of_the_seed_preset(tmp_path):
    seed = load_recipe("seed")
    text = seed.dump_yaml()
    assert Recipe.from_dict(yaml.safe_load(text)) == seed
    path = tmp_path / "seed_copy.yaml"
    path.write_text(text)
    again = load_recipe(str(path))
    assert again == seed
    assert again.dump_yaml() == text  # and the dump is stable


def test_dump_is_plain_yaml(tmp_path):
    data = yaml.safe_load(load_recipe("seed").dump_yaml())
    assert data["augment"]["scale"] == [0.08, 1.0]  # tuples become lists, safe_load-able
    assert set(data["augment"]) == {f.name for f in dataclasses.fields(AugmentConfig)}


def test_changed_recipe_round_trips(tmp_path):
    rec = load_recipe("seed").replace_augment(image_size=160, auto_augment=None, repeats=1, ratio=(0.5, 2.0))
    path = tmp_path / "r.yml"
    path.write_text(rec.dump_yaml())
    assert load_recipe(path) == rec


def test_partial_recipe_fills_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("augment:\n  image_size: 128\n")
    rec = load_recipe(path)
    assert rec.augment == AugmentConfig(image_size=128)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("colour: red\n", "unknown key.*colour"),
        ("augment:\n  imagesize: 224\n", "unknown key.*imagesize"),
        ("augment: [1, 2]\n", "mapping"),
        ("- 1\n- 2\n", "mapping"),
        ("augment:\n  image_size: 4\n", "image_size"),
        ("augment:\n  image_size: '224'\n", "augment"),
        ("augment:\n  scale: [0.5, 0.1]\n", "scale"),
        ("augment:\n  scale: 0.5\n", "augment"),
        ("augment:\n  ratio: [0, 1]\n", "ratio"),
        ("augment:\n  interpolation: nearest\n", "interpolation"),
        ("augment:\n  hflip: 1.5\n", "hflip"),
        ("augment:\n  mix_prob: -0.1\n", "mix_prob"),
        ("augment:\n  cutmix_alpha: -1\n", "alpha"),
        ("augment:\n  repeats: 0\n", "repeats"),
        ("augment:\n  aug_fill: [1, 2]\n", "aug_fill"),
        ("augment:\n  aug_fill: [0, 0, 256]\n", "aug_fill"),
        ("augment: {image_size: 224\n", "YAML"),
    ],
)
def test_bad_recipes_raise(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=match):
        load_recipe(path)


def test_missing_file_and_unknown_preset_raise(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match=r"unknown recipe preset 'nope'.*seed"):
        load_recipe("nope")


def test_recipe_error_is_a_value_error():
    assert issubclass(RecipeError, ValueError)


def test_short_ratio_raises_recipe_error():
    with pytest.raises(RecipeError):
        Recipe.from_dict({"augment": {"ratio": [1.0]}})


@pytest.mark.parametrize("field", ["image_size", "repeats"])
def test_non_integer_sizes_raise(field):
    with pytest.raises(RecipeError):
        Recipe.from_dict({"augment": {field: 2.5 if field == "repeats" else 224.5}})


def test_three_value_scale_raises():
    with pytest.raises(RecipeError):
        Recipe.from_dict({"augment": {"scale": [0.1, 0.5, 0.9]}})
