"""kdcache info / show / export on small synthetic caches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kdcache.cli.main import cli
from kdcache.teacher_cache import content_hash, create_or_open_writer, num_units, open_cache
from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_unit
from kdcache.views.plan import make_epoch_plan


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    # Durability is not under test here (crash consistency is, by the commit order); fsync on this
    # disk costs ~5 ms a call and the suite makes hundreds.
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def build(path: Path, backend: str = "zarr", epochs_done: int = 2, finalize: bool = True, **kw):
    m = synthetic_manifest(backend=backend, num_samples=301, unit_size=64, epochs=2, **kw)
    w = create_or_open_writer(path, m)
    for e in range(epochs_done):
        for u in range(num_units(m)):
            w.write_unit(e, u, synthetic_unit(m, e, u))
    if finalize:
        w.finalize()
    return m


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("info") / "cache"
    build(path)
    return path


def test_info_json(cache):
    s = json.loads(run("info", str(cache), "--json").output)
    reader = open_cache(cache)
    assert s["format_version"] == 1 and s["backend"] == "zarr" and s["finished"] is True
    assert s["teacher"]["name"] == "synthetic"
    assert (s["num_samples"], s["num_classes"], s["image_size"], s["topk"]) == (301, 10, 224, 3)
    assert s["epochs_complete"] == [0, 1]
    assert s["views"] == 600 and s["units_complete"] == 10
    assert s["bytes_on_disk"] == reader.bytes_on_disk()
    assert s["bytes_per_view"] == pytest.approx(s["bytes_on_disk"] / 600, abs=0.01)
    assert s["content_digest"] == content_hash(reader)
    assert json.loads(run("info", str(cache), "--json", "--no-digest").output)["content_digest"] is None
    # Coverage of the 2 complete epochs, from their plans (seed, 301 samples, repeats 3).
    seen = {int(i) for e in (0, 1) for i in make_epoch_plan(s["seed"], e, 301, s["repeats"]).sample_ids}
    assert s["coverage"]["samples_seen"] == len(seen) and s["coverage"]["exact"] is True
    assert s["coverage"]["views_per_sample"] == pytest.approx(600 / len(seen), abs=1e-4)


def test_info_text(cache):
    out = run("info", str(cache)).output
    assert "zarr, format 1, finished" in out
    assert "complete: 0-1 (2 of 2 planned)" in out
    assert "top-3 of 10 classes" in out
    assert "distinct views per sample seen" in out
    assert content_hash(open_cache(cache)) in out


def test_info_on_an_unfinished_build(tmp_path):
    build(tmp_path / "c", epochs_done=1, finalize=False)
    out = run("info", str(tmp_path / "c")).output
    assert "build in progress or interrupted" in out and "complete: 0 (1 of 2 planned)" in out


def test_info_errors_are_clean(tmp_path):
    r = run("info", str(tmp_path / "missing"), ok=False)
    assert r.exit_code == 1 and "no cache at" in r.output and "Traceback" not in r.output
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.json").write_text('{"format_version": 7}')
    r = run("info", str(tmp_path / "c"), ok=False)
    assert r.exit_code == 1 and "upgrade kdcache" in r.output


def test_show_json_decodes_every_field(cache):
    lines = run("show", str(cache), "--epoch", "1", "--slots", "62:67", "--json").output.splitlines()
    views = [json.loads(x) for x in lines]
    assert [v["slot"] for v in views] == [62, 63, 64, 65, 66]  # crosses the unit boundary at 64
    block = open_cache(cache).load_epoch(1)
    for v in views:
        s = v["slot"]
        assert v["sample_id"] == block.sample_id[s] and v["repeat"] == block.repeat[s]
        assert v["path"] is None  # no dataset location recorded
        assert v["digest"] == f"{int(block.digest[s]):016x}"
        assert "crop" in v["params"] and v["params"]["mix"]["mode"] in ("mixup", "cutmix")
        assert [t["class"] for t in v["topk"]] == block.topk_class[s].tolist()
        assert v["topk"][0]["name"] == f"class_{block.topk_class[s, 0]:05d}"
        probs = np.exp(block.topk_logprob[s].astype(np.float64))
        np.testing.assert_allclose([t["prob"] for t in v["topk"]], probs, atol=1e-6)
        assert v["other_mass"] == pytest.approx(max(0.0, 1 - probs.sum()), abs=1e-6)
    assert views[0]["params"]["mix"] == views[1]["params"]["mix"]  # slots 62, 63 are one mixing pair


def test_show_resolves_paths_from_the_recorded_dataset(tmp_path):
    from PIL import Image

    from kdcache.data import ImageFolderSource

    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20 + i, 16)).save(tmp_path / "data" / c / f"{i}.png")
    src = ImageFolderSource(tmp_path / "data")
    m = synthetic_manifest(num_samples=len(src), unit_size=4, epochs=1)
    dataset = {"fingerprint": src.fingerprint, "num_samples": len(src), "source": str(tmp_path / "data")}
    m = m.replace(dataset=dataset)
    w = create_or_open_writer(tmp_path / "c", m)
    for u in range(num_units(m)):
        w.write_unit(0, u, synthetic_unit(m, 0, u))
    w.finalize()
    views = [json.loads(x) for x in run("show", str(tmp_path / "c"), "--slots", "0:10", "--json").output.splitlines()]
    assert [v["path"] for v in views] == [src.name(v["sample_id"]) for v in views]
    # A dataset that changed since the build: ids only, with a note.
    Image.new("RGB", (9, 9)).save(tmp_path / "data" / "cat" / "new.png")
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "c"), "--json"])
    assert "not the dataset the cache was built from" in result.output
    assert json.loads(result.output.splitlines()[-1])["path"] is None


def test_show_text_and_errors(cache, tmp_path):
    out = run("show", str(cache), "--slots", "0:2").output
    assert out.count("epoch 0 slot") == 2 and "teacher " in out and "crop " in out
    r = run("show", str(cache), "--slots", "290:310", ok=False)
    assert r.exit_code == 2 and "300 slots" in r.output
    build(tmp_path / "c", epochs_done=1, finalize=False)
    r = run("show", str(tmp_path / "c"), "--epoch", "1", ok=False)
    assert r.exit_code == 1 and "not committed" in r.output


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_export_keeps_the_content_digest(cache, tmp_path, fmt):
    out = tmp_path / "out"
    result = run("export", str(cache), "--format", fmt, "--out", str(out))
    digest = content_hash(open_cache(cache))
    assert f"content digest {digest} unchanged" in result.output
    exported = open_cache(out)
    assert exported.manifest.backend == fmt
    assert content_hash(exported) == digest
    # Rerunning resumes (nothing left to copy) and round-trips back.
    assert "exported 0 unit(s)" in run("export", str(cache), "--format", fmt, "--out", str(out)).output
    other = "zarr" if fmt == "wds" else "wds"
    run("export", str(out), "--format", other, "--out", str(tmp_path / "back"))
    assert content_hash(open_cache(tmp_path / "back")) == digest


def test_export_refuses_a_foreign_directory(cache, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    r = run("export", str(cache), "--format", "wds", "--out", str(tmp_path / "x"), ok=False)
    assert r.exit_code == 1 and "not empty" in r.output
