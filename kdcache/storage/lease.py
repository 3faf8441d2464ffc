"""The build lock on an object store: a lease object naming its holder, kept alive by a heartbeat.

Object stores have no flock. The lease is created with a conditional PUT (first writer wins) and
rewritten every ``ttl / 5`` seconds. A lease is stale, and is taken over, when its holder ran on this
host and its pid is gone (a killed build resumed on the same machine starts at once), or when its
heartbeat is older than ``ttl`` (a holder on another machine died; hosts' clocks must agree to well
within ``ttl``). ``KDCACHE_LEASE_TTL`` sets ``ttl`` in seconds (default 300).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from kdcache.storage.locking import LOCK_NAME, CacheLockedError

if TYPE_CHECKING:
    from kdcache.storage.base import Storage

DEFAULT_TTL_S = 300.0


@dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    def describe(self, now: float) -> str:
        return f"host {self.host}, pid {self.pid}, last heartbeat {now - self.heartbeat:.0f} s ago"

    def is_stale(self, now: float, ttl: float) -> bool:
        if now - self.heartbeat > ttl:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _parse(raw: bytes) -> Lease | None:
    try:
        d = json.loads(raw.decode())
        return Lease(str(d["host"]), int(d["pid"]), float(d["started"]), float(d["heartbeat"]), str(d["token"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


class LeaseLock:
    def __init__(self, storage: Storage, name: str = LOCK_NAME, ttl: float | None = None):
        self.storage = storage
        self.name = name
        self.ttl = float(os.environ.get("KDCACHE_LEASE_TTL", DEFAULT_TTL_S)) if ttl is None else ttl
        self.took_over: Lease | None = None  # the stale holder we replaced, if any
        self.lost = False  # True once another process took the lease over from us
        self._me: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return self.storage.where(self.name)

    def acquire(self) -> LeaseLock:
        now = time.time()
        me = Lease(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
        if not self.storage.write_new(self.name, _dump(me)):
            try:
                current = _parse(self.storage.read(self.name))
            except FileNotFoundError:
                current = None  # released between our two calls
            if current is not None and current.token == me.token:
                # Our own create: its response was lost and the client retried the PUT, which then found
                # the object (s3fs and botocore retry on connection errors). The lease is ours.
                return self._start(me)
            if current is not None and not current.is_stale(time.time(), self.ttl):
                who = current.describe(time.time())
                raise CacheLockedError(
                    f"cache {self.storage.location} is being built by another process ({who})."
                    f" Wait for it to finish, or stop it; a lease whose holder died is taken over after "
                    f"{self.ttl:.0f} s without a heartbeat, or at once from the holder's own host"
                )
            self.took_over = current
            self.storage.write(self.name, _dump(me))
            # Two processes may take over the same stale lease; the last write wins, the other backs off.
            time.sleep(0.2)
            if self._current_token() != me.token:
                raise CacheLockedError(f"cache {self.storage.location}: another process took over the stale lease")
        return self._start(me)

    def _start(self, me: Lease) -> LeaseLock:
        self._me = me
        self._thread = threading.Thread(target=self._beat, name="kdcache-lease", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise CacheLockedError if another process has taken the lease over (we were paused past the
        ttl): the build calls this before committing each unit, so it stops instead of writing alongside."""
        if self.lost or (self._me is not None and not self._held()):
            self.lost = True
            raise CacheLockedError(
                f"cache {self.storage.location}: another build took over this build's lease (no heartbeat "
                f"for {self.ttl:.0f} s?); stopping. Committed units are kept; rerun the build once the other ends"
            )

    def _current_token(self) -> str | None:
        try:
            lease = _parse(self.storage.read(self.name))
        except FileNotFoundError:
            return None
        return lease.token if lease else None

    def _held(self) -> bool:
        """The stored lease is still ours."""
        return self._me is not None and self._current_token() == self._me.token

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 5):
            if not self._beat_once():
                return

    def _beat_once(self) -> bool:
        """Renew the lease; False once it is no longer ours (then it is never written again)."""
        if self._me is None:
            return False
        # A transient store error is survivable: the next beat retries well within the ttl.
        with contextlib.suppress(OSError):
            # Paused past the ttl (suspended, partitioned), this holder may have been taken over: writing
            # its heartbeat then would overwrite the new holder's lease and put two builds on the cache.
            if not self._held():
                self.lost = True
                return False
            self._me = Lease(self._me.host, self._me.pid, self._me.started, time.time(), self._me.token)
            self.storage.write(self.name, _dump(self._me))
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._held():
            self.storage.delete(self.name)
        self._me = None

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _dump(lease: Lease) -> bytes:
    return json.dumps(asdict(lease)).encode()
