"""Crash-safe file primitives: a file appears under its final name only once its bytes are durable.

Temporary names start with a dot and contain ``.tmp-``; readers ignore such names.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_temp(name: str) -> bool:
    return name.startswith(".")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once everything written to it is durable.

    The bytes go to a temporary file beside ``path``, which is fsynced and renamed over ``path`` when the
    block ends; an exception (or a crash) leaves the previous file, never a half-written one. The folder
    is fsynced after the rename so the new name survives a power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_path(path.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` all-or-nothing (see :func:`atomic_file`).

    exclusive=True never replaces an existing file: returns False (and writes nothing) if ``path``
    exists, which makes it a safe "first writer wins" between processes.
    """
    if not exclusive:
        with atomic_file(path) as f:
            f.write(data)
        return True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike rename, link fails if the target exists
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_path(path.parent)
    return True


def tree_size(root: Path) -> int:
    """Bytes of all regular files under ``root`` (what the cache costs on disk, headers included)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total
