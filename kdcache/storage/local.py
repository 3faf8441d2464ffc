"""A cache folder on local disk: write-to-temp, fsync, rename (atomic.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from kdcache.storage.atomic import tree_size, write_atomic
from kdcache.storage.base import Storage
from kdcache.storage.errors import is_disk_full


class LocalStorage(Storage):
    is_local = True

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def location(self) -> Path:
        return self.root

    def child(self, name: str) -> LocalStorage:
        return LocalStorage(self.root / name)

    def where(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def absolute(self) -> str:
        return str(self.root.resolve())

    def read(self, key: str) -> bytes:
        # Plain strings, not pathlib: an epoch is ~756 chunks per field and pathlib costs ~0.1 s of it.
        try:
            with open(os.path.join(self.root, key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise self.missing(key) from None

    def write(self, key: str, data: bytes) -> None:
        with self._naming_full_disk(key):
            write_atomic(self.root / key, data)

    def write_new(self, key: str, data: bytes) -> bool:
        with self._naming_full_disk(key):
            return write_atomic(self.root / key, data, exclusive=True)

    @contextlib.contextmanager
    def _naming_full_disk(self, key: str) -> Iterator[None]:
        """A full disk named with the file being written: write(2) and fsync(2) errors carry no path."""
        try:
            yield
        except OSError as e:
            if not is_disk_full(e) or e.filename:
                raise
            raise OSError(e.errno, e.strerror, self.where(key)) from e

    def exists(self, key: str = "") -> bool:
        return (self.root / key).exists()

    def listdir(self, key: str = "") -> list[str]:
        try:
            return os.listdir(self.root / key if key else self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / key).unlink()

    def delete_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=False)

    def total_size(self) -> int:
        return tree_size(self.root)

    def is_folder_like_file(self) -> bool:
        return self.root.exists() and not self.root.is_dir()
