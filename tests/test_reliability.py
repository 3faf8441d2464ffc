"""Failure behaviour of build and train: clear errors, non-zero exits, nothing already written lost."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from build_helpers import REPO, cache_info, run_cli, tiny_build, tiny_train, write_dataset, write_teacher


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    data = write_dataset(root / "data", ["ant", "bee", "cat"], per_class=6)  # 18 images
    weights = write_teacher(root / "teacher.pth", 3)
    ref = root / "ref"
    run_cli(*build(data, weights, ref))
    return root, data, weights, ref, cache_info(ref)["content_digest"]


def build(data: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return tiny_build(data, weights, out, "--epochs", "2", "--unit-size", "4", *extra)


def copy_data(env, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(env[1], dst)
    return dst


def test_a_second_build_is_refused_naming_the_holder(env, tmp_path):
    from kdcache.storage.flock import BuildLock

    _, data, weights, _, _ = env
    out = tmp_path / "c"
    with BuildLock(out):
        proc = run_cli(*build(data, weights, out), check=False)
    assert proc.returncode != 0
    assert "being built by another process" in proc.stderr and "pid" in proc.stderr and "started" in proc.stderr


def test_a_stale_lock_of_a_dead_build_is_taken_over(env, tmp_path):
    _, data, weights, _, digest = env
    out = tmp_path / "c"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from kdcache.storage.flock import "
            "BuildLock; BuildLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((out / "build.lock").read_text())["pid"] == holder.pid  # left behind by the dead build
    run_cli(*build(data, weights, out))
    assert cache_info(out)["content_digest"] == digest


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_image_stops_the_build_and_resume_completes_after_repair(env, tmp_path, damage):
    _, _, weights, _, digest = env
    data = copy_data(env, tmp_path)
    victim = data / "bee" / "img003.jpg"
    original = victim.read_bytes()
    if damage == "garbage":
        victim.write_bytes(b"not a jpeg" * (len(original) // 10) + b"x" * (len(original) % 10))
    else:
        victim.write_bytes(original[: len(original) // 3])
    out = tmp_path / "c"
    proc = run_cli(*build(data, weights, out), check=False)
    assert proc.returncode != 0
    assert "bee/img003.jpg" in proc.stderr and "Traceback" not in proc.stderr
    victim.write_bytes(original)
    if damage == "truncated":
        # The file's size is part of the dataset fingerprint recorded when the build started, so the
        # repaired dataset is a different one: resuming is refused (with what to do), nothing deleted.
        again = run_cli(*build(data, weights, out), check=False)
        assert again.returncode != 0 and "dataset.fingerprint" in again.stderr
        return
    run_cli(*build(data, weights, out))
    assert cache_info(out)["content_digest"] == digest


def test_non_image_files_are_ignored_and_other_modes_work(env, tmp_path):
    from PIL import Image

    _, _, weights, _, _ = env
    data = copy_data(env, tmp_path)
    (data / "ant" / "notes.txt").write_text("not an image")
    base = Image.open(data / "cat" / "img000.jpg")
    base.convert("L").save(data / "cat" / "grey.png")
    base.convert("CMYK").save(data / "cat" / "cmyk.jpg")
    base.convert("RGBA").save(data / "cat" / "rgba.png")
    Image.fromarray(__import__("numpy").asarray(base.convert("L")).astype("uint16") * 257).save(
        data / "cat" / "d16.png"
    )
    out = tmp_path / "c"
    run_cli(*build(data, weights, out, "--epochs", "1"))
    assert cache_info(out)["num_samples"] == 18 + 4


def test_a_failed_write_exits_cleanly_and_the_build_resumes(env, tmp_path, monkeypatch):
    from kdcache.teacher_cache.store import CacheWriter

    _, data, weights, _, digest = env
    out = tmp_path / "c"
    real = CacheWriter.write_unit
    calls = {"n": 0}

    def full_disk(self, epoch, unit, data_):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, epoch, unit, data_)

    monkeypatch.setattr(CacheWriter, "write_unit", full_disk)
    proc = run_cli(*build(data, weights, out), check=False)
    assert proc.returncode != 0 and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    monkeypatch.setattr(CacheWriter, "write_unit", real)
    from kdcache.teacher_cache.store import open_cache

    # Units committed before and after the failed one are kept; the failed one is not marked complete.
    done = open_cache(out, allow_unfinished=True).completed_units()
    assert 2 <= len(done) < 10 and (0, 2) not in done
    run_cli(*build(data, weights, out))
    assert cache_info(out)["content_digest"] == digest


def test_a_corrupted_shard_is_named_by_verify_and_train(env, tmp_path):
    _, _, _, ref, _ = env
    out = tmp_path / "c"
    shutil.copytree(ref, out)
    chunk = out / "e00001" / "topk_logprob" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])
    v = run_cli("verify", str(out), "--no-teacher", "--views", "64", check=False)
    assert v.returncode != 0 and "e00001/topk_logprob" in v.stderr
    t = run_cli(*tiny_train(out, tmp_path / "run", "--replay-check", "0"), check=False)
    assert t.returncode != 0 and "e00001/topk_logprob" in t.stderr and "Traceback" not in t.stderr


def test_a_hand_edited_manifest_is_caught(env, tmp_path):
    _, _, _, ref, _ = env
    out = tmp_path / "c"
    shutil.copytree(ref, out)
    m = json.loads((out / "manifest.json").read_text())
    m["seed"] = m["seed"] + 1
    (out / "manifest.json").write_text(json.dumps(m))
    proc = run_cli("verify", str(out), "--no-teacher", "--views", "8", check=False)
    assert proc.returncode != 0
    assert "seed" in proc.stderr or "epoch plan" in proc.stderr
