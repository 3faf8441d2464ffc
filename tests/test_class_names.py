"""Readable class names: `show` (text, JSON, PNG) and `info` name an ImageNet teacher's classes as ImageNet
does (from timm's ImageNetInfo), with the WordNet id and index beside the name; other caches keep their
folder names."""

from __future__ import annotations

import json

import pytest
from build_helpers import run_cli, tiny_build
from timm.data import ImageNetInfo

from kdcache.models.class_names import ClassNames, wordnet_lemma
from kdcache.testing.fixtures import write_dataset, write_teacher

# Three ImageNet-1k classes as WordNet-id folders (the layout of an ImageNet subset on disk).
WNIDS = ["n01440764", "n02123045", "n02124075"]


@pytest.fixture(scope="module")
def imagenet_cache(tmp_path_factory):
    """A 1000-class test_resnet at a seeded random init, built on WordNet-id folders."""
    root = tmp_path_factory.mktemp("in1k")
    data = write_dataset(root / "data", WNIDS, per_class=3)
    weights = write_teacher(root / "t1000.pth", 1000)
    out = root / "cache"
    run_cli(*tiny_build(data, weights, out))
    return out


def test_names_come_from_timm_with_the_id_and_index_beside_them():
    info = ImageNetInfo("imagenet-1k")
    names = ClassNames.of(info.label_names(), 1000)
    assert names.describe(285) == "Egyptian cat (n02124075, 285)"
    assert names.describe(0) == f"{wordnet_lemma('n01440764')} (n01440764, 0)"
    # the first synonym of timm's lemma, never a name written here
    assert wordnet_lemma("n01440764") == info.index_to_description(0).split(",")[0].strip()
    # WebDataset shards label by index: "0".."999" from an ImageNet-sized head are ImageNet's classes
    by_index = ClassNames.of([str(i) for i in range(1000)], 1000)
    assert by_index.describe(285) == "Egyptian cat (n02124075, 285)"
    # other teachers keep the dataset's folder names; digits stay digits
    assert ClassNames.of(["ant", "bee", "cat"], 3).describe(2) == "cat (2)"
    assert ClassNames.of([str(i) for i in range(10)], 10).describe(3) == "3 (3)"


def test_show_prints_the_imagenet_name_next_to_each_class_id(imagenet_cache):
    text = run_cli("show", str(imagenet_cache), "--slots", "0:2").stdout
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("teacher"))
    info = ImageNetInfo("imagenet-1k")
    views = [
        json.loads(x) for x in run_cli("show", str(imagenet_cache), "--slots", "0:2", "--json").stdout.split("\n") if x
    ]
    for t in views[0]["topk"]:
        wnid = info.index_to_label_name(t["class"])
        lemma = info.index_to_description(t["class"]).split(",")[0].strip()
        assert t["name"] == wnid and t["label"] == lemma  # "name" stays what the manifest records
        assert t["shown"] == f"{lemma} ({wnid}, {t['class']})"
        assert f"{lemma} ({wnid}, {t['class']}) {t['prob']:.4f}" in line


def test_info_says_where_the_names_come_from(imagenet_cache, tmp_path):
    out = run_cli("info", str(imagenet_cache), "--no-hash").stdout
    assert "classes      1000, ImageNet names" in out and "Egyptian cat" not in out  # the first few only
    assert "tench (n01440764, 0)" in out
    s = json.loads(run_cli("info", str(imagenet_cache), "--json", "--no-hash").stdout)
    assert s["classes"]["first"][0] == "tench (n01440764, 0)"
    # a teacher of the dataset's own classes: its folder names
    data = write_dataset(tmp_path / "abc", ["ant", "bee", "cat"], per_class=2)
    weights = write_teacher(tmp_path / "t3.pth", 3)
    run_cli(*tiny_build(data, weights, tmp_path / "c3"))
    assert "classes      3, the dataset's class folders: ant, bee, cat" in run_cli("info", str(tmp_path / "c3")).stdout
