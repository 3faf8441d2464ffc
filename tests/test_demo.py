"""`kdcache demo`: the digits ImageFolder writer, and a --quick end-to-end run (teacher, cache, students)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import yaml
from build_helpers import run_cli
from PIL import Image
from sklearn.datasets import load_digits

from kdcache.data import ImageFolderSource
from kdcache.demo.data import IMAGE_SIZE, digit_image, is_val, write_digits


@pytest.fixture(scope="module")
def digits_folders(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits") / "data")


def test_digits_split_sizes_and_classes(digits_folders):
    f = digits_folders
    assert (f.num_train, f.num_val) == (1497, 300)  # 1,797 real digits, every 6th to val
    train, val = ImageFolderSource(f.train), ImageFolderSource(f.val)
    assert (len(train), len(val)) == (1497, 300)
    assert train.classes == val.classes == [str(d) for d in range(10)]
    per_class = Counter(val.label(i) for i in range(len(val)))
    assert sorted(per_class) == list(range(10)) and min(per_class.values()) >= 25
    # Disjoint, and the split is the documented rule on load_digits rows.
    rows = lambda src: {int(src.name(i).split("/")[-1][:4]) for i in range(len(src))}  # noqa: E731
    assert rows(train).isdisjoint(rows(val))
    assert rows(val) == {i for i in range(1797) if is_val(i)} == set(range(0, 1797, 6))


def test_digits_are_real_rgb_32px_digits(digits_folders):
    d = load_digits()
    for row in (0, 1, 6, 1795, 1796):
        split = digits_folders.val if is_val(row) else digits_folders.train
        path = split / str(int(d.target[row])) / f"{row:04d}.png"
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.size == (IMAGE_SIZE, IMAGE_SIZE)
            px = np.asarray(img)
        assert np.array_equal(px, np.asarray(digit_image(d.images[row])))  # lossless PNG
        assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 0], px[..., 2])
        # The upscaled image is the 8x8 digit: block means track the original grey levels.
        blocks = px[..., 0].astype(float).reshape(8, 4, 8, 4).mean(axis=(1, 3))
        assert np.corrcoef(blocks.ravel(), d.images[row].ravel())[0, 1] > 0.95


def test_write_digits_is_idempotent(digits_folders, tmp_path):
    before = sorted(p.stat().st_mtime_ns for p in digits_folders.val.rglob("*.png"))
    again = write_digits(digits_folders.train.parent)
    assert (again.num_train, again.num_val) == (1497, 300)
    assert sorted(p.stat().st_mtime_ns for p in digits_folders.val.rglob("*.png")) == before
    small = write_digits(tmp_path / "small", limit_train=40)
    assert (small.num_train, small.num_val) == (40, 300)
    assert len(ImageFolderSource(small.train)) == 40
    fewer = write_digits(tmp_path / "small", limit_train=20)  # the folder holds exactly the new split
    assert fewer.num_train == len(ImageFolderSource(fewer.train)) == 20


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--workers", "0", "--no-progress"]
    r = run_cli(*args)
    table = r.stdout
    for needle in (
        "teacher resnet10t",
        "build cache",
        "--kd none",
        "--kd cached",
        "--kd online",
        "TensorBoard",
        "teacher resnet14t",
        "add resnet14t to the cache (a layer)",
        "--teacher resnet10t,resnet14t",
    ):
        assert needle in table, table
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["quick"] and s["data"]["num_val"] == 300
    rows = s["students"]
    assert [(x["student"], x["kd"], x["teachers"]) for x in rows] == [
        ("test_resnet", "none", ""),
        ("test_resnet", "cached", ""),
        ("test_resnet", "online", ""),
        ("test_efficientnet", "cached", ""),
        ("test_resnet", "cached", "resnet10t,resnet14t"),  # from both teachers' layers of the one cache
    ]
    for x in rows:
        run = out / "runs" / "seed0" / (f"{x['student']}-{x['kd']}" + ("-ensemble" if x["teachers"] else ""))
        assert (run / "final.pt").is_file() and (run / "metrics.jsonl").is_file() and (run / "tb").is_dir()
        assert 0 <= x["top1_final"] <= 100
        assert (x["teacher_s"] > 0) == (x["kd"] == "online")  # only the online run pays for the teacher
    assert s["build"]["views"] == 256 and s["build"]["teacher_s"] > 0
    # the second teacher saw the same 256 views, re-rendered from the cache's stored params
    assert s["add_teacher"]["views"] == 256 and (out / "cache" / "layers" / s["add_teacher"]["layer"]).is_dir()
    ensemble = yaml.safe_load((out / "runs" / "seed0" / "test_resnet-cached-ensemble" / "config.yaml").read_text())
    assert [t["name"] for t in ensemble["info"]["teachers"]] == ["resnet10t", "resnet14t"]
    assert (out / "teacher" / "resnet10t.pth").is_file()
    assert set(s["parity"]["mean_top1"]) == {"none", "cached", "online"}
    # A rerun reuses every finished stage.
    again = run_cli(*args)
    assert again.stderr.count("reused") >= 9, again.stderr
    assert json.loads((out / "summary.json").read_text())["students"][1]["top1_final"] == rows[1]["top1_final"]


def test_digits_preset_is_the_seed_augmentation_at_32px_without_flip():
    from kdcache.recipe import load_recipe

    seed, digits = load_recipe("seed"), load_recipe("digits")
    assert digits.name == "digits"
    assert digits.augment.image_size == 32 and digits.augment.hflip == 0.0
    assert dataclasses.replace(digits.augment, image_size=224, hflip=0.5) == seed.augment
    t = digits.train
    assert t.epochs == t.cosine_epochs + t.cooldown_epochs and t.global_batch % 2 == 0
    assert (t.opt, t.kd_weight, t.ce_weight, t.temperature) == ("lamb", 0.8, 0.2, 1.0)
