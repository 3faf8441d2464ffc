"""Caches on S3 (moto's server on loopback, tests/s3_helpers.py): build, kill, resume, torchrun, the lease
lock, one writer per unit, train/verify/info from the URL.

The conformance suite (tests/test_store_conformance.py) and the storage tests (tests/test_storage.py)
run on S3 too, as their ``s3`` parameter: round trips, a unit whose commit object is missing being
invisible, header checks, stream_views over every shard (with DataLoader workers). This module covers
what needs a real build, several processes or the lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from build_helpers import (
    REPO,
    cache_info,
    run_cli,
    run_torchrun,
    three_class_setup,
    tiny_build,
    tiny_train,
)

from kdcache.storage import open_storage
from kdcache.storage.flock import CacheLockedError
from kdcache.storage.lease import LeaseLock
from kdcache.teacher_cache import CacheError, create_or_open_writer, open_cache
from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_unit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3build")
    data, weights = three_class_setup(root, per_class=9)  # 27 images -> 26 slots/epoch
    return root, data, weights


def build_args(data: Path, weights: Path, out: Path | str, *extra: str) -> list[str]:
    # Units of 4 views: 7 per epoch (few objects: each costs a request), so a killed build has committed
    # some units and not others.
    return tiny_build(data, weights, out, "--epochs", "2", "--unit-size", "4", *extra)


@pytest.fixture(scope="module")
def reference(setup) -> str:
    """Content digest of an uninterrupted local single-process build with the same arguments."""
    root, data, weights = setup
    run_cli(*build_args(data, weights, root / "ref"))
    return cache_info(root / "ref")["content_digest"]


def _committed(url: str) -> int:
    try:
        return len(open_cache(url, allow_unfinished=True).completed_units())
    except CacheError:  # no build header yet
        return 0


def _committed_in_epoch0(url: str, backend: str) -> int:
    """Units of epoch 0 committed so far, in one listing (polled while a build runs)."""
    names = open_storage(url).listdir("done/e00000" if backend == "zarr" else "e00000")
    return sum(n.startswith("u") for n in names)


def _lease(url: str) -> dict:
    return json.loads(open_storage(url).read("build.lock"))


@pytest.mark.parametrize("backend", ["zarr", "wds"])
def test_sigkilled_build_on_s3_resumes_to_the_local_digest_and_trains(setup, reference, s3_bucket, tmp_path, backend):
    _, data, weights = setup
    url = f"{s3_bucket}/c"
    args = build_args(data, weights, url, "--format", backend)
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdcache", *args], cwd=REPO, stdout=out, stderr=out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and _committed_in_epoch0(url, backend) < 2:
            time.sleep(0.05)
        was_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert was_running, f"the build ended before it could be killed:\n{log.read_text()}"
    assert 2 <= _committed(url) < 14
    assert _lease(url)["pid"] == proc.pid  # the dead build's lease is still there
    with pytest.raises(CacheError, match="has not finished"):
        open_cache(url)

    # Same command again: the dead build's lease (this host, pid gone) is taken over at once, even with
    # the default ttl of 300 s, and the missing units are written.
    run_cli(*args)
    info = cache_info(url)
    assert info["backend"] == backend and info["finished"] and info["epochs_complete"] == [0, 1]
    assert info["content_digest"] == reference
    assert not open_storage(url).exists("build.lock")  # released at the end

    assert "OK" in run_cli("verify", url, "--no-teacher", "--views", "16").stdout
    run = tmp_path / "run"
    trained = run_cli(*tiny_train(url, run, "--epochs", "1"))
    assert "replay check: 8 re-rendered views match" in trained.stdout
    assert (run / "final.pt").is_file()
    assert f"cache: {url}\n" in (run / "config.yaml").read_text()  # the URL, not a local path made of it


# zarr is the one with shared objects (each epoch's array metadata, created by whichever rank comes first).
@pytest.mark.parametrize("backend", ["zarr", pytest.param("wds", marks=pytest.mark.slow)])
def test_two_process_torchrun_build_on_s3_gives_the_local_digest(setup, reference, s3_bucket, backend):
    _, data, weights = setup
    url = f"{s3_bucket}/ddp"
    proc = run_torchrun(build_args(data, weights, url, "--format", backend), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert cache_info(url)["content_digest"] == reference


def test_a_live_lease_refuses_a_second_build_and_a_killed_holders_lease_is_taken_over(setup, s3_bucket):
    _, data, weights = setup
    url = f"{s3_bucket}/c"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from kdcache.storage import build_lock, open_storage; "
            "build_lock(open_storage(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)",
            url,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = run_cli(*build_args(data, weights, url), check=False)
        assert proc.returncode != 0
        assert "being built by another process" in proc.stderr and f"pid {holder.pid}" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert _lease(url)["pid"] == holder.pid  # the refused build left the lease alone
        assert open_storage(url).listdir() == ["build.lock"]  # and wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = LeaseLock(open_storage(url)).acquire()  # default ttl: the pid is gone, so no waiting
    try:
        assert lock.took_over is not None and lock.took_over.pid == holder.pid
        assert _lease(url)["pid"] != holder.pid
    finally:
        lock.release()
    assert not open_storage(url).exists("build.lock")


def _foreign_lease(storage, age_s: float, pid: int = 1) -> dict:
    now = time.time()
    lease = {"host": "other-host.invalid", "pid": pid, "started": now - age_s, "heartbeat": now - age_s, "token": "f"}
    storage.write("build.lock", json.dumps(lease).encode())
    return lease


def test_another_hosts_lease_is_taken_over_only_after_the_ttl(s3_bucket, monkeypatch):
    monkeypatch.setenv("KDCACHE_LEASE_TTL", "60")
    storage = open_storage(f"{s3_bucket}/c")
    # A pid that is dead here says nothing about another host: only the heartbeat's age counts.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fresh = _foreign_lease(storage, age_s=5, pid=dead.pid)
    with pytest.raises(CacheLockedError, match=r"host other-host\.invalid, pid \d+, last heartbeat \d+ s ago"):
        LeaseLock(storage).acquire()
    assert json.loads(storage.read("build.lock")) == fresh  # left as it was

    _foreign_lease(storage, age_s=120)  # no heartbeat for twice the ttl: its holder died
    lock = LeaseLock(storage).acquire()
    try:
        assert lock.took_over is not None and lock.took_over.host == "other-host.invalid"
        mine = json.loads(storage.read("build.lock"))
        assert mine["host"] != "other-host.invalid" and mine["token"] != "f"
    finally:
        lock.release()
    assert not storage.exists("build.lock")


def test_a_holder_that_was_taken_over_stops_renewing_and_leaves_the_new_lease(s3_bucket):
    storage = open_storage(f"{s3_bucket}/c")
    lock = LeaseLock(storage, ttl=3600).acquire()  # its own heartbeat thread will not beat in this test
    try:
        before = json.loads(storage.read("build.lock"))
        assert lock._beat_once() and json.loads(storage.read("build.lock"))["heartbeat"] >= before["heartbeat"]
        # Paused past the ttl, it was taken over by a build elsewhere; its next beat must not undo that.
        theirs = _foreign_lease(storage, age_s=0)
        assert not lock._beat_once() and lock.lost
        assert json.loads(storage.read("build.lock")) == theirs
    finally:
        lock.release()
    assert json.loads(storage.read("build.lock")) == theirs  # release removes only its own lease


def test_a_build_whose_lease_was_taken_over_stops_before_its_next_commit(setup, s3_bucket, monkeypatch):
    _, data, weights = setup
    url = f"{s3_bucket}/c"
    real_acquire = LeaseLock.acquire

    def acquire_then_lose(self):  # as if paused past the ttl right after taking the lease
        real_acquire(self)
        _foreign_lease(self.storage, age_s=0)
        return self

    monkeypatch.setattr(LeaseLock, "acquire", acquire_then_lose)
    proc = run_cli(*build_args(data, weights, url), check=False)
    assert proc.returncode != 0 and "took over this build's lease" in proc.stderr
    assert _committed(url) == 0  # not one unit written alongside the new holder


def test_a_lease_created_by_a_retried_put_is_held(s3_bucket, monkeypatch):
    storage = open_storage(f"{s3_bucket}/c")
    real = storage.write_new

    def retried(key, data):  # the PUT landed, its response was lost, the client's retry finds the object
        assert real(key, data)
        return real(key, data)

    monkeypatch.setattr(storage, "write_new", retried)
    lock = LeaseLock(storage).acquire()
    assert json.loads(storage.read("build.lock"))["pid"] == os.getpid() and lock.took_over is None
    lock.release()
    assert not storage.exists("build.lock")


def test_wds_shard_objects_are_never_replaced(s3_bucket):
    url = f"{s3_bucket}/c"
    m = synthetic_manifest(backend="wds", num_samples=41, unit_size=8, epochs=1)  # 5 units of 8
    first = create_or_open_writer(url, m)
    second = create_or_open_writer(url, m)  # another process on the same cache
    first.write_unit(0, 1, synthetic_unit(m, 0, 1))
    shard = open_storage(url).read("e00000/u000001.tar")
    # The second writer listed the epoch before the first committed (a race no listing can close): the
    # conditional PUT is what refuses it.
    second._completed_in_epoch = lambda epoch: set()
    other = synthetic_unit(m.replace(seed=m.seed + 1), 0, 1)
    with pytest.raises(CacheError, match="another process wrote the same unit"):
        second.write_unit(0, 1, other)
    assert open_storage(url).read("e00000/u000001.tar") == shard
    del second._completed_in_epoch  # back to listing the store
    with pytest.raises(CacheError, match="already committed"):
        second.write_unit(0, 1, other)
