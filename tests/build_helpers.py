"""Small real datasets and tiny teachers for build/train tests (no downloads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Moved to kdcache.testing so that benchmarks share them; re-exported so the tests import them from here.
from kdcache.testing.fixtures import write_dataset, write_teacher
from kdcache.testing.tiny_runs import tiny_build as tiny_build
from kdcache.testing.tiny_runs import tiny_train as tiny_train

REPO = Path(__file__).resolve().parents[1]


def three_class_setup(root: Path, per_class: int) -> tuple[Path, Path]:
    """An ant/bee/cat ImageFolder with ``per_class`` images each under ``root/data``, and a 3-class
    ``test_resnet`` teacher at ``root/teacher.pth``: the inputs of most build and train tests."""
    data = write_dataset(root / "data", ["ant", "bee", "cat"], per_class=per_class)
    return data, write_teacher(root / "teacher.pth", 3)


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli(
    *args: str, check: bool = True, in_process: bool = True, env: dict | None = None, timeout: float = 600
) -> CliResult:
    """Run ``kdcache ARGS``. In-process (click's runner) by default, to spare the ~5 s of imports
    of a fresh interpreter; ``in_process=False`` for what needs a real process."""
    if in_process:
        from click.testing import CliRunner

        from kdcache.cli.main import cli

        r = CliRunner().invoke(cli, list(args), catch_exceptions=True)
        stderr = r.stderr
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            import traceback

            stderr += "".join(traceback.format_exception(r.exception))
        result = CliResult(r.exit_code, r.stdout, stderr)
    else:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "kdcache", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=REPO,
        )
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"kdcache {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def run_torchrun(args: list[str], nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m kdcache ARGS`` with one thread per process."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "kdcache",
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def cache_info(path: Path) -> dict:
    return json.loads(run_cli("info", str(path), "--json").stdout)


def kill_once_writing(args: list[str], folder: Path, new_files: int, timeout: float = 120) -> bool:
    """Start ``kdcache ARGS`` in a subprocess, SIGKILL it once ``new_files`` more files appeared under
    ``folder`` than when its first file did (so it dies mid-write), and return whether it was still
    running then (False: it finished first, and the test needs a longer job)."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "kdcache", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def count() -> int:
        return sum(len(files) for _, _, files in os.walk(folder)) if folder.exists() else 0

    deadline = time.monotonic() + timeout
    baseline = None
    while time.monotonic() < deadline and proc.poll() is None:
        n = count()
        if baseline is None and n > 0:
            baseline = n
        if baseline is not None and n >= baseline + new_files:
            break
        time.sleep(0.005)
    was_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return was_running
