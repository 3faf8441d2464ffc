"""WebDataset image shards (``train-{000000..000146}.tar``) as a random-access source.

The view engine needs random access (pairs join arbitrary samples), while webdataset's pipeline
streams. We index each tar once (member offsets via ``tarfile``) and read image bytes by offset.
Sample id = position in (shard order of the brace pattern, member order in the shard): stable as
long as the shards are unchanged, which the fingerprint checks.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from braceexpand import braceexpand
from PIL import Image, UnidentifiedImageError

from kdcache.data.source import DataSourceError

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
_LABEL_EXTS = ("cls", "label", "class")


@dataclass(frozen=True)
class _Entry:
    shard: int
    key: str
    offset: int
    size: int
    label: int


class WebDatasetSource:
    def __init__(self, pattern: str):
        self.pattern = pattern
        self.shards = [Path(p) for p in braceexpand(pattern)]
        missing = [str(p) for p in self.shards if not p.is_file()]
        if missing:
            raise DataSourceError(f"{len(missing)} WebDataset shard(s) of {pattern!r} not found, e.g. {missing[0]}")
        entries: list[_Entry] = []
        for s, path in enumerate(self.shards):
            entries.extend(_index_shard(s, path))
        if not entries:
            raise DataSourceError(f"no images found in the shards of {pattern!r}")
        self._entries = entries
        n = max(e.label for e in entries) + 1
        self._classes = [str(i) for i in range(n)]
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for e in self._entries:
            h.update(f"{self.shards[e.shard].name}\t{e.key}\t{e.size}\t{e.label}\n".encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self._entries)

    def label(self, sample_id: int) -> int:
        return self._entries[sample_id].label

    def name(self, sample_id: int) -> str:
        e = self._entries[sample_id]
        return f"{self.shards[e.shard].name}:{e.key}"

    def open(self, sample_id: int) -> Image.Image:
        e = self._entries[sample_id]
        f = self._file(e.shard)
        f.seek(e.offset)
        data = f.read(e.size)
        try:
            return Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError) as err:
            raise DataSourceError(f"cannot read image {self.name(sample_id)} (sample {sample_id}): {err}") from err

    def _file(self, shard: int):
        if os.getpid() != self._pid:  # DataLoader workers must not share the parent's file offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.shards[shard], "rb")  # noqa: SIM115 - cached handle
        return f

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state


def _index_shard(shard: int, path: Path) -> list[_Entry]:
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = f"{os.path.dirname(m.name)}/{stem}" if os.path.dirname(m.name) else stem
                ext = ext.lower()
                if ext in _IMAGE_EXTS and key not in images:
                    images[key] = (m.offset_data, m.size)
                    order.append(key)
                elif ext in _LABEL_EXTS:
                    f = tar.extractfile(m)
                    raw = f.read().decode().strip() if f else ""
                    try:
                        labels[key] = int(raw)
                    except ValueError as e:
                        raise DataSourceError(f"{path}: label {m.name} is not an integer: {raw[:40]!r}") from e
    except tarfile.TarError as e:
        raise DataSourceError(f"cannot read WebDataset shard {path}: {e}") from e
    out = []
    for key in order:
        if key not in labels:
            raise DataSourceError(f"{path}: sample {key!r} has an image but no .cls label")
        off, size = images[key]
        out.append(_Entry(shard, key, off, size, labels[key]))
    return out


def open_source(spec: str | os.PathLike[str]):
    """``--data``: an ImageFolder directory, or a (brace-expanded) list of WebDataset .tar shards."""
    from kdcache.data.imagefolder import ImageFolderSource

    text = str(spec)
    if ".tar" in text and not Path(text).is_dir():
        return WebDatasetSource(text)
    return ImageFolderSource(text)
