"""Time a whole process, to its exit or to a line it prints, with its peak RSS.

The peak RSS comes from ``os.wait4``'s resource usage of that one child (``ru_maxrss``: its own peak,
or a reaped descendant's if larger), so it is per run; RUSAGE_CHILDREN would keep the largest of every
run so far, and ``/usr/bin/time -v`` is not everywhere. A process stopped at a line is SIGKILLed with its
whole process group (DataLoader workers included) as soon as the line appears; its RSS is the main
process's peak up to then.

Linux folds the parent's resident size at fork into the child's ``ru_maxrss`` (exec keeps the old
address space's high-water mark), so a benchmark that has imported torch would see every child at
least that large: :func:`probe` runs :func:`run_process` in a small launcher process
(``python -m kdcache.testing.process_probe``, which imports nothing heavy) for that reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessRun:
    seconds: float  # start to the marker line (stopped runs) or to the exit
    peak_rss: int  # bytes
    cpu_seconds: float  # user + system of the process (and of the children it reaped), whole run
    returncode: int  # negative: killed by that signal (a run stopped at its marker: -SIGKILL)
    reached: bool  # the marker appeared (runs without a marker: exited 0)
    timed_out: bool
    output: str  # stdout and stderr, interleaved

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def run_process(
    cmd: Sequence[str],
    *,
    marker: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
) -> ProcessRun:
    """Run ``cmd``; with ``marker`` (a regular expression), stop it at the first output line that matches.
    Without one, wait for it to exit. Either way it is killed after ``timeout`` seconds."""
    pattern = re.compile(marker) if marker is not None else None
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=None if env is None else dict(env),
        cwd=cwd,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group, so a kill takes the workers too
    )
    lines: list[str] = []
    hit: list[float] = []
    timed_out = threading.Event()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(proc.pid, signal.SIGKILL)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if pattern is not None and not hit and pattern.search(line):
                hit.append(time.perf_counter() - start)
                kill()

    def expire() -> None:
        timed_out.set()
        kill()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    end = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    kill()  # whatever of its group outlived it (workers of a process that exited)
    reader.join(timeout=10)
    reached = bool(hit) if pattern is not None else proc.returncode == 0
    return ProcessRun(
        seconds=hit[0] if hit else end,
        peak_rss=usage.ru_maxrss * 1024,  # KiB on Linux
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        returncode=proc.returncode,
        reached=reached and not timed_out.is_set(),
        timed_out=timed_out.is_set(),
        output="".join(lines),
    )


def probe(
    cmd: Sequence[str],
    *,
    marker: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
) -> ProcessRun:
    """:func:`run_process` from a small launcher process, so the peak RSS is the command's own."""
    spec = {"cmd": list(cmd), "marker": marker, "cwd": None if cwd is None else os.fspath(cwd), "timeout": timeout}
    launcher = subprocess.run(
        [sys.executable, "-m", "kdcache.testing.process_probe", json.dumps(spec)],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if launcher.returncode != 0:
        raise RuntimeError(f"the process probe failed ({launcher.returncode}): {launcher.stderr[-2000:]}")
    return ProcessRun(**json.loads(launcher.stdout.strip().splitlines()[-1]))


def _launcher_main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    run = run_process(spec["cmd"], marker=spec["marker"], cwd=spec["cwd"], timeout=spec["timeout"])
    print(json.dumps(dataclasses.asdict(run)))


if __name__ == "__main__":
    _launcher_main(sys.argv[1:])
