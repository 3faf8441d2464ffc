"""Where a cache's bytes live: a local directory or any fsspec URL (s3://, gs://, memory://, ...).

Both backends and the manifest go through this small interface of whole-object operations, which is
what object stores offer. The commit rules need only two of its promises:

- ``write`` is all-or-nothing: a reader sees the old object, the new one, or none, never a part.
  Local disk gets it from write-to-temp + fsync + rename; an object store from a single PUT.
- ``write_new`` never replaces: it is the "first writer wins" used for the build header. Local disk
  uses link(2); S3 a conditional PUT (``If-None-Match: *``), through fsspec's ``mode="create"``.

Keys are relative POSIX paths (``e00000/topk_class/c/3/0``); ``""`` is the cache root itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdcache.teacher_cache.atomic import tree_size, write_atomic
from kdcache.teacher_cache.errors import CacheError
from kdcache.teacher_cache.lock import LOCK_NAME


class StorageError(CacheError):
    """A cache location that cannot be opened (unknown protocol, missing fsspec implementation)."""


def is_url(spec: str | Path) -> bool:
    """True for fsspec URLs other than plain local paths (``file://`` counts as local)."""
    text = str(spec)
    return "://" in text and not text.startswith("file://")


def open_storage(spec: str | Path | Storage) -> Storage:
    """The storage for a local path or an fsspec URL. S3 credentials and endpoint come from the usual
    AWS settings (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL_S3``, ``~/.aws``), read by botocore."""
    if isinstance(spec, Storage):
        return spec
    text = str(spec)
    if text.startswith("file://"):
        return LocalStorage(Path(text[len("file://") :]))
    return FsspecStorage(text) if is_url(text) else LocalStorage(Path(text))


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

    def child(self, name: str) -> Storage:
        """The storage of the sub-folder ``name``."""
        return open_storage(self.where(name))

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

    @abstractmethod
    def lock(self, name: str = LOCK_NAME) -> Any:
        """The build lock object for this folder (see lock.py and lease.py)."""

    def is_folder_like_file(self) -> bool:
        """True if the location itself is a plain file (not usable as a cache folder)."""
        return False


class LocalStorage(Storage):
    is_local = True

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def location(self) -> Path:
        return self.root

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
        write_atomic(self.root / key, data)

    def write_new(self, key: str, data: bytes) -> bool:
        return write_atomic(self.root / key, data, exclusive=True)

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

    def lock(self, name: str = LOCK_NAME) -> Any:
        from kdcache.teacher_cache.lock import BuildLock

        return BuildLock(self.root, name)

    def is_folder_like_file(self) -> bool:
        return self.root.exists() and not self.root.is_dir()


class FsspecStorage(Storage):
    """An fsspec folder. Object writes are single PUTs, so every write is atomic on object stores; on
    filesystems that are not object stores (sftp, ...) fsspec gives no such promise: use local paths."""

    is_local = False

    def __init__(self, url: str, fs: Any = None):
        import fsspec

        self.url = url.rstrip("/")
        if fs is None:
            try:
                fs, path = fsspec.core.url_to_fs(self.url)
            except ImportError as e:  # fsspec names the missing package (s3fs, gcsfs, ...)
                raise StorageError(f"cannot open {self.url}: {e}. For s3://, pip install 'kdcache[s3]'") from None
            except ValueError as e:
                raise StorageError(f"cannot open {self.url}: {e}") from None
        else:
            path = fs._strip_protocol(self.url)
        self.fs = fs
        self.base = path.rstrip("/")

    @property
    def location(self) -> str:
        return self.url

    def child(self, name: str) -> Storage:
        return FsspecStorage(f"{self.url}/{name}", fs=self.fs)

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}" if key else self.base

    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise self.missing(key) from None

    def read_many(self, keys: Sequence[str]) -> list[bytes]:
        if not keys:
            return []
        paths = [self._path(k) for k in keys]
        got = self.fs.cat(paths, on_error="return")  # s3fs fetches these concurrently
        out = []
        for key, path in zip(keys, paths, strict=True):
            value = got.get(path, FileNotFoundError(path))
            if isinstance(value, FileNotFoundError):
                raise self.missing(key)
            if isinstance(value, Exception):
                raise value
            out.append(value)
        return out

    def write(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), bytes(data))

    def write_new(self, key: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._path(key), bytes(data), mode="create")
        except FileExistsError:
            return False
        return True

    def exists(self, key: str = "") -> bool:
        self.fs.invalidate_cache(self._path(key))
        return bool(self.fs.exists(self._path(key)))

    def listdir(self, key: str = "") -> list[str]:
        path = self._path(key)
        self.fs.invalidate_cache(path)  # s3fs caches listings; another process may have committed since
        try:
            entries = self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = path.rstrip("/") + "/"
        return sorted({e.rstrip("/")[len(prefix) :].split("/")[0] for e in entries if e.startswith(prefix)} - {""})

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_all(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.base, recursive=True)
        self.fs.invalidate_cache(self.base)

    def total_size(self) -> int:
        self.fs.invalidate_cache(self.base)
        try:
            return int(self.fs.du(self.base))
        except FileNotFoundError:
            return 0

    def lock(self, name: str = LOCK_NAME) -> Any:
        from kdcache.teacher_cache.lease import LeaseLock

        return LeaseLock(self, name)

    def is_folder_like_file(self) -> bool:
        return bool(self.fs.isfile(self.base))
