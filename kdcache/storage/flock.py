"""One build at a time per cache: an exclusive ``flock`` on a lock file that names its holder.

The kernel releases a flock when its process dies (SIGKILL included), so a lock left by a dead
build is stale by construction and simply taken over; no pid guessing, no race between two
takers. Only rank 0 of a torchrun job takes it; the other ranks follow rank 0 through barriers.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from kdcache.storage.locking import LOCK_NAME, CacheLockedError


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started: str

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


class BuildLock:
    def __init__(self, cache: Path, name: str = LOCK_NAME):
        self.path = Path(cache) / name
        self._fd: int | None = None
        self.took_over: LockHolder | None = None  # the dead holder we replaced, if any

    def acquire(self) -> BuildLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.read(fd, 4096))
            os.close(fd)
            who = holder.describe() if holder else "unknown holder"
            raise CacheLockedError(
                f"cache {self.path.parent} is being built by another process ({who}). "
                "Wait for it to finish, or stop it; a build that died releases the lock by itself."
            ) from None
        self.took_over = _parse(os.read(fd, 4096))
        me = LockHolder(socket.gethostname(), os.getpid(), dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(asdict(me)).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def check(self) -> None:
        """Nothing to check: a flock cannot be taken from a live holder (LeaseLock.check can fail)."""

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BuildLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(raw: bytes) -> LockHolder | None:
    try:
        d = json.loads(raw.decode())
        return LockHolder(str(d["host"]), int(d["pid"]), str(d["started"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
