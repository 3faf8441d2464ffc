"""A cache folder at an fsspec URL (s3://, gs://, memory://, ...): whole-object reads and single PUTs."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from kdcache.storage.base import Storage
from kdcache.storage.errors import StorageError


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

    def is_folder_like_file(self) -> bool:
        return bool(self.fs.isfile(self.base))
