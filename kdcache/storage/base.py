"""The storage interface: whole-object operations on one folder (see the package docstring for the
two promises the commit rules rest on)."""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path


def is_url(spec: str | Path) -> bool:
    """True for fsspec URLs other than plain local paths (``file://`` counts as local)."""
    text = str(spec)
    return "://" in text and not text.startswith("file://")


class Storage(ABC):
    """Whole-object access to one folder (a cache, or the cache root holding many)."""

    is_local: bool

    @property
    @abstractmethod
    def location(self) -> str | Path:
        """The folder as the user wrote it: a Path on local disk, a URL otherwise (for messages)."""

    def where(self, key: str = "") -> str:
        """Full path or URL of ``key``, for messages."""
        base = str(self.location).rstrip("/")
        return f"{base}/{key}" if key else base

    def absolute(self) -> str:
        """The folder as an absolute path or the URL: what to record, print or compare."""
        return self.where()

    @abstractmethod
    def child(self, name: str) -> Storage:
        """The storage of the sub-folder ``name``."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is none."""

    def read_many(self, keys: Sequence[str]) -> list[bytes]:
        """Several objects at once (concurrently where the store allows); a missing one raises
        FileNotFoundError whose ``key`` attribute names it."""
        return [self.read(k) for k in keys]

    def missing(self, key: str) -> FileNotFoundError:
        e = FileNotFoundError(errno.ENOENT, "no such file or object", self.where(key))
        e.key = key  # type: ignore[attr-defined]
        return e

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object, all-or-nothing and durable when this returns."""

    @abstractmethod
    def write_new(self, key: str, data: bytes) -> bool:
        """Create the object only if absent (all-or-nothing); False, writing nothing, if it exists."""

    @abstractmethod
    def exists(self, key: str = "") -> bool:
        """An object at ``key``, or a folder with something in it."""

    @abstractmethod
    def listdir(self, key: str = "") -> list[str]:
        """Names directly under the folder ``key`` (objects and sub-folders); [] if there is none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""

    @abstractmethod
    def delete_all(self) -> None:
        """Remove the folder and everything under it."""

    @abstractmethod
    def total_size(self) -> int:
        """Bytes of every object under the folder."""

    def is_folder_like_file(self) -> bool:
        """True if the location itself is a plain file (not usable as a cache folder)."""
        return False
