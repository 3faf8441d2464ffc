"""Several teachers on one set of views: `kdcache build --teacher T2 --out CACHE` adds a layer."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from build_helpers import cache_info, kill_once_writing, run_cli, three_class_setup, tiny_build, write_teacher
from PIL import Image

from kdcache.teacher_cache.store import content_hash, open_cache
from kdcache.teacher_cache.store.layers import VIEW_FIELDS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    data, w1 = three_class_setup(root, per_class=7)  # 21 images -> 20 slots/epoch
    w2 = write_teacher(root / "t2.pth", 3, seed=1)
    return root, data, w1, w2


def _args(data: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return tiny_build(data, weights, out, "--epochs", "2", "--unit-size", "4", *extra)


def _layers(cache: Path) -> list[Path]:
    return sorted((cache / "layers").iterdir()) if (cache / "layers").is_dir() else []


@pytest.fixture(scope="module")
def layered(setup):
    """A cache of teacher 1 (2 epochs) with teacher 2 added, and the first layer's hash before the add."""
    root, data, w1, w2 = setup
    cache = root / "cache"
    run_cli(*_args(data, w1, cache))
    before = content_hash(open_cache(cache))
    proc = run_cli(*_args(data, w2, cache))
    return cache, before, proc


def test_adding_a_teacher_leaves_the_views_alone_and_reuses_them(layered):
    cache, before, proc = layered
    assert f"added teacher test_resnet to cache {cache}" in proc.stderr
    assert content_hash(open_cache(cache)) == before  # the first layer is bit-identical
    (layer,) = _layers(cache)
    first, other = open_cache(cache), open_cache(layer)
    assert other.manifest.teacher["weights_sha256"] != first.manifest.teacher["weights_sha256"]
    assert other.epochs_complete == [0, 1]
    for e in (0, 1):
        a, b = first.load_epoch(e), other.load_epoch(e)
        for name in VIEW_FIELDS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        # another teacher's labels, not a copy of the first's
        assert not np.array_equal(a.topk_logprob, b.topk_logprob)
    # verify checks the views once and each layer with its own teacher (weights from the manifests)
    out = run_cli("verify", str(cache), "--views", "4").stdout
    assert out.count("teacher test_resnet") == 2 and f"(layers/{layer.name})" in out and out.endswith("OK\n")


def test_adding_the_same_teacher_again_is_a_no_op(setup, layered):
    _, data, _, w2 = setup
    cache, before, _ = layered
    (layer,) = _layers(cache)
    h = content_hash(open_cache(layer))
    proc = run_cli(*_args(data, w2, cache))
    assert "is already in cache" in proc.stderr
    assert content_hash(open_cache(layer)) == h and content_hash(open_cache(cache)) == before


def test_the_layer_equals_a_separate_build_of_the_second_teacher(setup, layered, tmp_path):
    """Replaying stored params renders the views the sampler would: the same labels as a fresh build."""
    _, data, _, w2 = setup
    cache, _, _ = layered
    (layer,) = _layers(cache)
    alone = tmp_path / "alone"
    run_cli(*_args(data, w2, alone))
    assert content_hash(open_cache(layer)) == content_hash(open_cache(alone))


def test_views_that_differ_are_refused_with_the_differences(setup, layered):
    _, data, _, w2 = setup
    cache, before, _ = layered
    proc = run_cli(*_args(data, w2, cache, "--seed", "3", "--image-size", "40"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "seed" in proc.stderr and "image_size" in proc.stderr and "cannot be added" in proc.stderr
    assert content_hash(open_cache(cache)) == before and len(_layers(cache)) == 1


def test_more_epochs_than_the_views_have_is_refused(setup, layered):
    _, data, _, _ = setup
    cache, _, _ = layered
    w3 = write_teacher(setup[0] / "t3.pth", 3, seed=3)
    proc = run_cli(*_args(data, w3, cache, "--epochs", "3"), check=False)
    assert proc.returncode != 0 and "--epochs 2 or fewer" in proc.stderr
    assert len(_layers(cache)) == 1


def test_an_altered_image_is_caught_by_the_digest_check(tmp_path):
    data, w1 = three_class_setup(tmp_path, per_class=4)
    w2 = write_teacher(tmp_path / "t2.pth", 3, seed=1)
    cache = tmp_path / "cache"
    run_cli(*tiny_build(data, w1, cache, "--unit-size", "4"))
    # Same size, so the dataset fingerprint (paths + sizes) still matches; other pixels.
    victim = sorted((data / "bee").iterdir())[0]
    raw = victim.read_bytes()
    flipped = Image.open(BytesIO(raw)).convert("RGB").transpose(Image.Transpose.ROTATE_180)
    # A JPEG of other pixels, padded to the old byte count (decoders ignore bytes after the end marker).
    for q in range(95, 5, -1):
        b = BytesIO()
        flipped.save(b, format="JPEG", quality=q)
        if len(b.getvalue()) <= len(raw):
            new = b.getvalue() + b"\0" * (len(raw) - len(b.getvalue()))  # trailing bytes after EOI are ignored
            break
    else:
        pytest.skip("could not re-encode the image within its size")
    victim.write_bytes(new)
    proc = run_cli(*tiny_build(data, w2, cache, "--unit-size", "4"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "re-renders with a different digest" in proc.stderr and "epoch 0 slot" in proc.stderr
    for layer in _layers(cache):  # nothing committed for the unit that held the altered view
        r = open_cache(layer, allow_unfinished=True)
        assert r.epochs_complete == []


def test_sigkill_mid_add_then_resume_gives_the_same_bytes(setup, layered, tmp_path):
    _, data, w1, w2 = setup
    cache = tmp_path / "cache"
    args = tiny_build(data, w1, cache, "--epochs", "2", "--unit-size", "2")
    run_cli(*args)
    add = tiny_build(data, w2, cache, "--epochs", "2", "--unit-size", "2")
    was_running = kill_once_writing(add, cache / "layers", 6)
    assert was_running, "the add finished before it could be killed; make it longer"
    (layer,) = _layers(cache)
    assert open_cache(layer, allow_unfinished=True).epochs_complete != [0, 1]
    run_cli(*add)
    clean = tmp_path / "clean"
    run_cli(*tiny_build(data, w1, clean, "--epochs", "2", "--unit-size", "2"))
    run_cli(*tiny_build(data, w2, clean, "--epochs", "2", "--unit-size", "2"))
    (clean_layer,) = _layers(clean)
    assert content_hash(open_cache(layer)) == content_hash(open_cache(clean_layer))
    assert cache_info(cache)["content_digest"] == cache_info(clean)["content_digest"]


def test_registry_adds_a_teacher_to_the_views_lists_finds_and_removes_it(setup, tmp_path):
    from kdcache.registry import cache_root
    from kdcache.registry.lookup import find_matches

    _, data, w1, _ = setup
    w2 = write_teacher(tmp_path / "eff.pth", 3, arch="test_efficientnet", seed=2)
    home = tmp_path / "home"
    root = ["--cache-root", str(home)]
    run_cli(*tiny_build(data, w1, None, *root))
    added = run_cli(*tiny_build(data, w2, None, *root, "--teacher", "test_efficientnet"))
    (key,) = [p.name for p in home.iterdir() if p.is_dir()]  # one set of views, one key
    cache = home / key / "zarr"
    assert f"added teacher test_efficientnet to cache {cache}" in added.stderr
    assert "a new teacher layer on the cache's views" in added.stderr
    again = run_cli(*tiny_build(data, w2, None, *root, "--teacher", "test_efficientnet"))
    assert "reused" in again.stderr and "layers/test_efficientnet-" in again.stderr

    info = cache_info(cache)
    assert [x["teacher"] for x in info["layers"]] == ["test_resnet", "test_efficientnet"]
    assert info["layers"][0]["content_hash"] == info["content_hash"]
    text = run_cli("info", str(cache)).stdout
    assert "teachers     test_resnet (test_resnet" in text and "layer        test_efficientnet" in text
    ls = run_cli("ls", *root).stdout
    assert "test_resnet, test_efficientnet" in ls
    shown = run_cli("show", str(cache), "--teacher", "test_efficientnet", "--json", "--slots", "0:2").stdout
    first = run_cli("show", str(cache), "--json", "--slots", "0:2").stdout
    assert shown != first  # another teacher's top-k on the same views

    fp = open_cache(cache).manifest.dataset["fingerprint"]
    r = cache_root(str(home))
    assert [e.key for e in find_matches(r, ["test_resnet", "test_efficientnet"], fp)] == [key]
    assert find_matches(r, ["test_resnet", "test_vit"], fp) == []

    before = content_hash(open_cache(cache))
    removed = run_cli("rm", key, *root, "--teacher", "test_efficientnet", "--yes")
    assert _layers(cache) == []
    # build --cache KEY names the views explicitly (a key prefix, as everywhere a key is taken)
    by_key = run_cli(*tiny_build(data, w2, None, *root, "--teacher", "test_efficientnet", "--cache", key[:6]))
    assert f"added teacher test_efficientnet to cache {cache}" in by_key.stderr
    removed = run_cli("rm", key, *root, "--teacher", "test_efficientnet", "--yes")
    assert "removed teacher test_efficientnet" in removed.stdout
    assert _layers(cache) == [] and content_hash(open_cache(cache)) == before
    refused = run_cli("rm", key, *root, "--teacher", "test_resnet", "--yes", check=False)
    assert refused.returncode != 0 and "first teacher" in refused.stderr
    assert find_matches(r, ["test_resnet", "test_efficientnet"], fp) == []


def test_a_two_process_add_gives_the_same_layer(setup, layered, tmp_path):
    from build_helpers import run_torchrun

    _, data, w1, w2 = setup
    cache, _, _ = layered
    (layer,) = _layers(cache)
    ddp = tmp_path / "ddp"
    run_cli(*_args(data, w1, ddp))
    proc = run_torchrun(_args(data, w2, ddp), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "added teacher test_resnet" in proc.stderr
    (ddp_layer,) = _layers(ddp)
    assert content_hash(open_cache(ddp_layer)) == content_hash(open_cache(layer))
