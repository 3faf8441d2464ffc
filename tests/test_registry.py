"""The cache registry: builds without --out keyed by content, reuse and extension, ls/rm, train lookup."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from build_helpers import cache_info, run_cli, three_class_setup, tiny_build, tiny_train

from kdcache.registry import cache_key, identity
from kdcache.teacher_cache import open_cache
from kdcache.testing.synthetic_cache import synthetic_manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    data, weights = three_class_setup(root, per_class=5)  # 15 images -> 14 slots
    ref = root / "ref"
    run_cli(*tiny_build(data, weights, ref, "--epochs", "2"))
    return data, weights, cache_info(ref)


def registry_build(data: Path, weights: Path, home: Path, *extra: str):
    return run_cli(*tiny_build(data, weights, None, "--cache-root", str(home), *extra))


def only_cache(home: Path, backend: str = "zarr") -> Path:
    keys = [p for p in home.iterdir() if p.is_dir()]
    assert len(keys) == 1, keys
    return keys[0] / backend


class CountingRunUnits:
    """Wraps the build's unit loop to record which (epoch, unit) the teacher was run on."""

    def __init__(self, monkeypatch):
        import kdcache.teacher_cache.teacher_pass.pipeline as pipeline

        self.units: list[tuple[int, int]] = []
        real = pipeline.run_units

        def wrapped(engine, runner, units, *a, **k):
            self.units.extend((u.epoch, u.index) for u in units)
            return real(engine, runner, units, *a, **k)

        monkeypatch.setattr(pipeline, "run_units", wrapped)


def test_same_build_again_reuses_the_cache_without_running_the_teacher(setup, tmp_path, monkeypatch):
    data, weights, ref = setup
    home = tmp_path / "home"
    first = registry_build(data, weights, home, "--epochs", "2")
    cache = only_cache(home)
    assert f"key {cache.parent.name}: new cache" in first.stderr
    assert cache_info(cache)["content_digest"] == ref["content_digest"]  # same content as --out

    counter = CountingRunUnits(monkeypatch)
    again = registry_build(data, weights, home, "--epochs", "2")
    assert "reused" in again.stderr and "teacher did not run" in again.stderr
    assert counter.units == []
    # Fewer epochs than the cache holds is a reuse too.
    assert "reused" in registry_build(data, weights, home, "--epochs", "1").stderr
    assert counter.units == []
    assert cache_info(cache)["content_digest"] == ref["content_digest"]


def test_more_epochs_build_only_the_new_ones_and_keep_the_shared_ones(setup, tmp_path, monkeypatch):
    data, weights, ref = setup
    home = tmp_path / "home"
    registry_build(data, weights, home, "--epochs", "1")
    cache = only_cache(home)
    before = open_cache(cache).load_epoch(0)
    counter = CountingRunUnits(monkeypatch)
    out = registry_build(data, weights, home, "--epochs", "2")
    assert "extended the cache that had epochs [0]" in out.stderr
    assert counter.units and {e for e, _ in counter.units} == {1}
    assert only_cache(home) == cache  # same key: epochs are not part of it
    assert open_cache(cache).load_epoch(0).equals(before)
    assert cache_info(cache)["content_digest"] == ref["content_digest"]


def test_content_arguments_change_the_key_layout_arguments_do_not(setup, tmp_path):
    data, weights, _ = setup
    home = tmp_path / "home"
    registry_build(data, weights, home)
    key = only_cache(home).parent.name
    # A different unit size or format is the same content: the same key, reused or a sibling format.
    assert "reused" in registry_build(data, weights, home, "--unit-size", "4").stderr
    registry_build(data, weights, home, "--format", "wds")
    assert (home / key / "wds" / "manifest.json").is_file()
    assert cache_info(home / key / "wds")["content_digest"] == cache_info(home / key / "zarr")["content_digest"]
    # A different seed is different content: a new key.
    registry_build(data, weights, home, "--seed", "1")
    assert len([p for p in home.iterdir() if p.is_dir()]) == 2


def test_key_covers_exactly_the_view_fields():
    """The key covers the views alone (docs/registry.md); teacher, weights, k and precision are a layer's own."""
    base = synthetic_manifest(backend="zarr", num_samples=20, unit_size=4, epochs=1)
    k = cache_key(base)
    t = base.teacher
    same = [
        base.replace(backend="wds"),
        base.replace(unit_size=8),
        base.replace(epochs_planned=7),
        base.replace(created="2031-01-01T00:00:00+00:00"),
        base.replace(recipe={**base.recipe, "train": {"epochs": 3}, "name": "other"}),
        base.replace(dataset={**base.dataset, "source": "/elsewhere"}),
        base.replace(topk=base.topk + 1),
        base.replace(teacher={**t, "weights_sha256": "e" * 64}),
        base.replace(teacher={**t, "model": "other_model"}),
        base.replace(teacher={**t, "precision": "bf16-autocast"}),
    ]
    assert {cache_key(m) for m in same} == {k}
    different = [
        base.replace(seed=base.seed + 1),
        base.replace(dataset={**base.dataset, "fingerprint": "f" * 16}),
        base.replace(recipe={**base.recipe, "augment": {**base.recipe["augment"], "hflip": 0.0}}),
        base.replace(repeats=base.repeats + 1),
        base.replace(image_size=base.image_size + 8),
    ]
    keys = [cache_key(m) for m in different]
    assert k not in keys and len(set(keys)) == len(keys)
    assert set(identity(base)) == {"dataset_fingerprint", "augment", "seed", "repeats", "image_size"}


def test_ls_lists_every_cache_as_a_table_and_as_json(setup, tmp_path, monkeypatch):
    data, weights, _ = setup
    home = tmp_path / "home"
    monkeypatch.setenv("KDCACHE_HOME", str(home))
    empty = run_cli("ls", "--cache-root", str(home))
    assert "no caches" in empty.stderr
    registry_build(data, weights, home, "--epochs", "2")
    registry_build(data, weights, home, "--format", "wds")
    rows = json.loads(run_cli("ls", "--cache-root", str(home), "--json").stdout)
    assert sorted(r["format"] for r in rows) == ["wds", "zarr"]
    zarr_row = next(r for r in rows if r["format"] == "zarr")
    assert zarr_row["epochs_complete"] == [0, 1] and zarr_row["views"] == 2 * 14
    assert zarr_row["teacher"] == "test_resnet" and zarr_row["num_samples"] == 15
    assert zarr_row["bytes"] > 0 and zarr_row["finished"]
    assert zarr_row["build_command"].startswith("kdcache build --teacher test_resnet")
    # info/show/verify/export take a key prefix as CACHE (looked up under $KDCACHE_HOME).
    by_key = json.loads(run_cli("info", zarr_row["key"][:6], "--json", "--no-digest").stdout)
    assert by_key["path"] == zarr_row["location"]
    table = run_cli("ls", "--cache-root", str(home)).stdout.splitlines()
    assert table[0].split()[:4] == ["KEY", "FORMAT", "TEACHER", "DATASET"]
    assert len(table) == 3 and all(zarr_row["key"] in line for line in table[1:])


def test_rm_asks_refuses_while_building_and_removes(setup, tmp_path):
    from kdcache.storage.flock import BuildLock

    data, weights, _ = setup
    home = tmp_path / "home"
    registry_build(data, weights, home)
    cache = only_cache(home)
    key = cache.parent.name
    # Without a terminal and without --yes nothing is removed.
    refused = run_cli("rm", key[:6], "--cache-root", str(home), check=False)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    with BuildLock(cache):
        busy = run_cli("rm", key, "--yes", "--cache-root", str(home), check=False)
    assert busy.returncode != 0 and "being built" in busy.stderr
    assert (cache / "manifest.json").is_file()
    unknown = run_cli("rm", "ffff", "--yes", "--cache-root", str(home), check=False)
    assert unknown.returncode != 0 and "kdcache ls" in unknown.stderr
    done = run_cli("rm", key[:6], "--yes", "--cache-root", str(home))
    assert "removed" in done.stdout
    assert not (home / key).exists()


def test_train_finds_the_cache_by_teacher_and_data_or_says_how_to_build_it(setup, tmp_path):
    data, weights, _ = setup
    home = tmp_path / "home"
    lookup = ["--teacher", "test_resnet", "--teacher-weights", str(weights), "--data", str(data)]
    root = ["--cache-root", str(home)]

    def train(run: str, *extra: str, check: bool = True, reuse: bool = True):
        args = [a for a in tiny_train(Path("unused"), tmp_path / run, "--epochs", "1", reuse=reuse) if a != "unused"]
        args.remove("--cache")
        return run_cli(*args, *root, *extra, check=check)

    missing = train("r0", *lookup, check=False)
    assert missing.returncode != 0
    assert "kdcache build --teacher test_resnet --data" in missing.stderr and str(home) in missing.stderr
    assert "--epochs 1 " in missing.stderr  # as many epochs as the student trains

    registry_build(data, weights, home)
    key = only_cache(home).parent.name
    found = train("r1", *lookup)
    assert f"using cache {key}" in found.stderr
    assert (tmp_path / "r1" / "metrics.jsonl").is_file()
    last_used = json.loads((home / key / "entry.json").read_text())["last_used"]
    assert last_used is not None

    # A registry key (prefix) works as --cache.
    assert f"using cache {key}" in train("r2", "--cache", key[:8]).stderr
    # Too few cached epochs: the refusal gives the recorded build command with the student's epochs.
    recorded = json.loads((home / key / "entry.json").read_text())["build_command"]
    short = train("r2b", "--cache", key[:8], "--epochs", "4", check=False, reuse=False)
    assert short.returncode == 1
    assert recorded.replace("--epochs 1", "--epochs 4") in " ".join(short.stderr.split())

    # Two caches of the same teacher and data: the error lists both keys.
    registry_build(data, weights, home, "--seed", "1")
    ambiguous = train("r3", *lookup, check=False)
    assert ambiguous.returncode != 0 and "choose one" in ambiguous.stderr
    keys = [p.name for p in home.iterdir() if p.is_dir()]
    assert all(f"--cache {k}" in ambiguous.stderr for k in keys)


@pytest.mark.parametrize("store", ["memory", "s3"])
def test_registry_root_on_an_object_store_url(setup, tmp_path, store, request):
    """The root may be an fsspec URL: fsspec's memory:// (this process only) or S3 (the emulator)."""
    import uuid

    import fsspec

    data, weights, ref = setup
    if store == "s3":
        home = request.getfixturevalue("s3_bucket") + "/caches"
    else:
        home = f"memory://kdc-{uuid.uuid4().hex[:12]}/caches"
    try:
        assert "new cache" in registry_build(data, weights, home, "--epochs", "2").stderr
        assert "reused" in registry_build(data, weights, home, "--epochs", "2").stderr
        rows = json.loads(run_cli("ls", "--cache-root", home, "--json").stdout)
        assert len(rows) == 1 and rows[0]["location"].startswith(home) and rows[0]["views"] == 2 * 14
        assert cache_info(rows[0]["location"])["content_digest"] == ref["content_digest"]
        train_args = [a for a in tiny_train(Path("x"), tmp_path / "run", "--epochs", "1") if a not in ("--cache", "x")]
        found = run_cli(*train_args, "--teacher", "test_resnet", "--data", str(data), "--cache-root", home)
        assert f"using cache {rows[0]['key']}" in found.stderr
        assert json.loads(run_cli("ls", "--cache-root", home, "--json").stdout)[0]["last_used"] is not None
        run_cli("rm", rows[0]["key"], "--yes", "--cache-root", home)
        assert json.loads(run_cli("ls", "--cache-root", home, "--json").stdout) == []
    finally:
        if store == "memory":
            with contextlib.suppress(FileNotFoundError):  # rm may have left nothing to clean
                fsspec.filesystem("memory").rm(home.split("/caches")[0].replace("memory://", "/"), recursive=True)
