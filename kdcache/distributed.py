"""The distributed world of a build or a training run: torchrun's environment, the process group, and
the few collectives kdcache needs. Everything degrades to a world of one process.

A rank that fails ends the job (docs/reliability.md, "A failing rank"): it reports itself and exits at
once without any collective teardown (:func:`exit_failed_rank`), and torchrun's agent then stops the
other ranks. ``KDCACHE_DIST_TIMEOUT`` bounds every collective for launchers without such an agent.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from kdcache.errors import UsageError

# Seconds a collective may wait for the other ranks before it fails (torch's default when unset: 30 min
# for gloo, 10 min for NCCL). torchrun ends a job on one node at once when a rank exits; this bounds the
# wait where nothing does (other launchers, ranks on other nodes).
TIMEOUT_ENV = "KDCACHE_DIST_TIMEOUT"
# Tests only: "RANK:POINT:N" makes the N-th pass of failure_point(POINT) on rank RANK raise InjectedFailure.
FAIL_ENV = "KDCACHE_TEST_FAIL"
# What a collective's error says when the rank at the other end is gone (gloo's and NCCL's wording).
_PEER_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
    "ncclRemoteError",
)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        """From the initialised default process group (torchrun sets LOCAL_RANK), else one process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return cls()

    def broadcast_from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (identity in a world of one)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: Sequence[float | torch.Tensor], device: torch.device) -> list[float]:
        """Sum scalars over processes (float64, one collective); identity for one process."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
        if self.enabled:
            dist.all_reduce(t)
        return [float(v) for v in t.cpu()]


def init_world(device: str) -> World:
    """Join the torchrun job if there is one (gloo on CPU, NCCL on CUDA); else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        timeout = collective_timeout()
        dist.init_process_group(backend=backend, **({} if timeout is None else {"timeout": timeout}))
    return World(rank, size, local_rank)


def collective_timeout() -> dt.timedelta | None:
    """``KDCACHE_DIST_TIMEOUT`` as a timedelta; None (torch's default) when unset."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a collective may wait, a number > 0")
    return dt.timedelta(seconds=seconds)


def close_world(world: World, failed: bool = False) -> None:
    """Leave the process group. After a failure (``failed``) leave it alone: destroying it may wait on
    ranks still inside a collective (NCCL), and the process is about to exit anyway."""
    if world.enabled and dist.is_initialized() and not failed:
        dist.destroy_process_group()


def launched_rank() -> tuple[int, int] | None:
    """(rank, world size) of a process started by torchrun (or any launcher setting RANK and WORLD_SIZE)
    with more than one process; None otherwise."""
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, size) if size > 1 else None


def peer_lost(error: BaseException) -> bool:
    """True if ``error`` is a collective failing because another rank went away (it failed first)."""
    if isinstance(error, dist.DistNetworkError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(p in text for p in _PEER_LOST)


def exit_failed_rank(message: str, *, peer: bool = False) -> NoReturn:
    """End this rank of a multi-process job at once: print one line naming it and ``message``, record the
    line for torchrun's failure summary, and ``os._exit(1)``.

    No teardown runs after this (destroying the process group, joining writer threads, exit handlers):
    any of it can block on the other ranks, which are still inside a collective and wait for this one.
    torchrun's agent sees the exit and stops the others (SIGTERM), so the whole job ends in seconds.
    ``peer``: this rank stopped because another one failed (its collective lost the peer): say so, and
    leave the root cause to that rank's record."""
    rank, size = launched_rank() or (0, 1)
    verb = "stopped because another rank failed first" if peer else "failed"
    line = f"rank {rank} of {size} {verb}: {message}"
    sys.stdout.flush()
    print(f"Error: {line}", file=sys.stderr, flush=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file and not peer:
        # The layout torch.distributed.elastic's ErrorHandler writes: torchrun prints it as the root cause.
        doc = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
        try:
            with open(error_file, "w") as f:
                json.dump(doc, f)
        except OSError:
            pass  # the line above already says it
    # DataLoader workers would outlive os._exit by up to their 5 s watchdog, holding the job's output open.
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(1)


class InjectedFailure(RuntimeError):
    """Raised where ``KDCACHE_TEST_FAIL`` asks for it: tests of a failing rank (never set otherwise)."""


_passes: dict[str, int] = {}


def failure_point(name: str) -> None:
    """Tests only: with ``KDCACHE_TEST_FAIL=RANK:NAME:N`` in the environment, the N-th pass of this point
    on rank RANK raises :class:`InjectedFailure`; without it, one environment lookup. Points:
    ``train-step`` (before each optimiser step), ``build-unit`` (before each unit's write)."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    rank, point, n = spec.split(":")
    if point != name or int(rank) != int(os.environ.get("RANK", "0")):
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(n):
        raise InjectedFailure(f"injected failure at pass {n} of {name} ({FAIL_ENV}={spec})")
