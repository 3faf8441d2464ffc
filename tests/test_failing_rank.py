"""A rank that raises ends the whole torchrun job at once, named in the message, and the same command
then resumes: build keeps its committed units (same content hash as a clean build), train continues from
its last checkpoint (same weights as a run that never failed).

The failure is injected with KDCACHE_TEST_FAIL=RANK:POINT:N (kdcache.distributed.failure_point), a hook
that exists for these tests only. Each failing job runs under a subprocess timeout far below the
collective timeouts (30 min for gloo) that a rank left waiting would hit: the timeout is the bound.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from build_helpers import cache_info, run_cli, run_torchrun, three_class_setup, tiny_build, tiny_train

# Far below a collective's 30 min default, and above torchrun's start-up on a loaded 2-core machine.
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("failing_rank")
    data, weights = three_class_setup(root, per_class=6)  # 18 images -> 18 slots per epoch
    return root, data, weights


@pytest.fixture(scope="module")
def cache(setup):
    root, data, weights = setup
    run_cli(*tiny_build(data, weights, root / "cache", "--epochs", "2"))
    return root / "cache"


def build_args(data: Path, weights: Path, out: Path) -> list[str]:
    # 4 epochs x 9 units of 2 views: each rank writes 18 units, so rank 1 fails with most of them to go.
    return tiny_build(data, weights, out, "--epochs", "4", "--unit-size", "2", "--batch-size", "2")


def rank_exit_codes(stderr: str) -> dict[int, int]:
    """Every failed rank's exit code from torchrun's failure summary (a rank it had to stop shows -15)."""
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", stderr)
    return {int(rank): int(code) for rank, code in found}


def assert_the_job_failed_on_rank_1(proc, point: str) -> None:
    assert proc.returncode != 0, proc.stderr
    codes = rank_exit_codes(proc.stderr)
    assert set(codes) == {0, 1} and all(code != 0 for code in codes.values()), proc.stderr
    line = "Error: rank 1 of 2 failed: injected failure at pass"
    assert line in proc.stderr and point in proc.stderr, proc.stderr
    # torchrun's summary names the same rank and error as the root cause (kdcache writes its error file).
    root_cause = proc.stderr.split("Root Cause", 1)[-1]
    assert "rank      : 1" in root_cause and "rank 1 of 2 failed: injected failure" in root_cause, proc.stderr


def test_a_failing_build_rank_ends_the_job_and_the_rerun_completes_it(setup, tmp_path, monkeypatch):
    from kdcache.teacher_cache.store import open_cache

    _, data, weights = setup
    out = tmp_path / "c"
    monkeypatch.setenv("KDCACHE_TEST_FAIL", "1:build-unit:3")  # rank 1 raises before writing its 3rd unit
    failed = run_torchrun(build_args(data, weights, out), timeout=JOB_TIMEOUT_S)
    assert_the_job_failed_on_rank_1(failed, "build-unit")
    kept = open_cache(out, allow_unfinished=True).completed_units()
    assert 0 < len(kept) < 36  # committed units are kept, the rest is still to do
    markers = {p: p.stat().st_mtime_ns for p in (out / "done").rglob("u*.json")}
    assert len(markers) == len(kept)

    monkeypatch.delenv("KDCACHE_TEST_FAIL")
    again = run_torchrun(build_args(data, weights, out), timeout=JOB_TIMEOUT_S)
    assert again.returncode == 0, again.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in markers.items())  # the rerun did not redo them
    clean = tmp_path / "clean"
    run_cli(*build_args(data, weights, clean))
    assert cache_info(out)["content_digest"] == cache_info(clean)["content_digest"]


def test_a_failing_train_rank_ends_the_job_and_the_rerun_resumes_from_the_checkpoint(cache, tmp_path, monkeypatch):
    # --resume from the start: the very same command starts the run, and continues it after a failure.
    args = tiny_train(cache, tmp_path / "run", "--batch-size", "4", "--resume")
    monkeypatch.setenv("KDCACHE_TEST_FAIL", "1:train-step:6")  # 4 steps per epoch: step 2 of epoch 2
    failed = run_torchrun(args, timeout=JOB_TIMEOUT_S)
    assert_the_job_failed_on_rank_1(failed, "train-step")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=False)["epoch"] == 1  # what the rerun continues from

    monkeypatch.delenv("KDCACHE_TEST_FAIL")
    again = run_torchrun(args, timeout=JOB_TIMEOUT_S)
    assert again.returncode == 0, again.stderr
    assert "kdcache train finished" in again.stderr and (tmp_path / "run" / "final.pt").is_file()
    clean_args = tiny_train(cache, tmp_path / "clean", "--batch-size", "4")
    assert run_torchrun(clean_args, timeout=JOB_TIMEOUT_S).returncode == 0
    resumed = torch.load(last, weights_only=False)["model"]
    never_failed = torch.load(tmp_path / "clean" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(resumed[k], never_failed[k]) for k in never_failed)


def test_failure_points_and_timeouts_parse_their_environment(monkeypatch):
    from kdcache.distributed import InjectedFailure, collective_timeout, failure_point, peer_lost
    from kdcache.errors import UsageError

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("KDCACHE_TEST_FAIL", "1:unit-test-point:2")
    failure_point("unit-test-point")
    failure_point("another-point")
    with pytest.raises(InjectedFailure, match="pass 2 of unit-test-point"):
        failure_point("unit-test-point")
    monkeypatch.setenv("RANK", "0")
    failure_point("unit-test-point")  # another rank: never

    monkeypatch.delenv("KDCACHE_DIST_TIMEOUT", raising=False)
    assert collective_timeout() is None
    monkeypatch.setenv("KDCACHE_DIST_TIMEOUT", "90")
    assert collective_timeout().total_seconds() == 90
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("KDCACHE_DIST_TIMEOUT", bad)
        with pytest.raises(UsageError, match="KDCACHE_DIST_TIMEOUT"):
            collective_timeout()

    gloo = "[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:18613"
    assert peer_lost(RuntimeError(gloo)) and not peer_lost(RuntimeError("shape mismatch"))
