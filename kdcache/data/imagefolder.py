"""ImageFolder source: ``root/<class>/<...>/<image>``, ids = sorted relative paths."""

from __future__ import annotations

import hashlib
import os
from array import array
from functools import cached_property
from operator import itemgetter
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from kdcache.data.source import DataSourceError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderSource:
    """One folder per class; sample id i is the i-th image in sorted relative-path order.

    The fingerprint hashes every relative path and file size, so renaming, adding, removing or
    rewriting an image with a different size changes it.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataSourceError(f"data directory {self.root} does not exist or is not a directory")
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataSourceError(f"{self.root} has no class folders; expected <root>/<class>/<image>")
        files: list[tuple[str, int, int]] = []  # (relpath, size, label)
        empty = []
        for label, cls in enumerate(classes):
            found = _scan(self.root / cls, cls, label)
            if not found:
                empty.append(cls)
            files.extend(found)
        if empty:
            raise DataSourceError(
                f"class folder(s) with no images ({', '.join(IMG_EXTENSIONS)}): {', '.join(empty[:10])}"
                f"{' ...' if len(empty) > 10 else ''} under {self.root}; remove them or add images"
            )
        files.sort(key=itemgetter(0))
        self._classes = classes
        self._paths = [f[0] for f in files]
        # Machine integers, not a Python int object per file (1.28M of them for ImageNet).
        self._sizes = array("q", map(itemgetter(1), files))
        self._labels = array("l", map(itemgetter(2), files))

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path, size in zip(self._paths, self._sizes, strict=True):
            h.update(f"{path}\t{size}\n".encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self._paths)

    def label(self, sample_id: int) -> int:
        return self._labels[sample_id]

    def name(self, sample_id: int) -> str:
        return self._paths[sample_id]

    def path(self, sample_id: int) -> Path:
        return self.root / self._paths[sample_id]

    def open(self, sample_id: int) -> Image.Image:
        path = self.path(sample_id)
        try:
            return Image.open(path)
        except (UnidentifiedImageError, OSError) as e:
            raise DataSourceError(f"cannot read image {path} (sample {sample_id}): {e}") from e


def _scan(folder: Path, prefix: str, label: int) -> list[tuple[str, int, int]]:
    """(relative path, size, label) of every image under ``folder``, its subfolders included (symlinks
    followed, unreadable folders skipped: what os.walk(followlinks=True) visits).

    One stat per file is unavoidable (the fingerprint hashes sizes), so it is made relative to the open
    folder (fstatat through a scandir over its descriptor) and nothing else is done per file but the
    name test and one string: at ImageNet size the scan costs the stat calls and little more."""
    out: list[tuple[str, int, int]] = []
    pending = [(os.fspath(folder), prefix)]
    while pending:
        path, rel = pending.pop()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    try:
                        is_dir = entry.is_dir()  # follows symlinks
                    except OSError:
                        is_dir = False
                    if is_dir:
                        pending.append((f"{path}/{name}", f"{rel}/{name}"))
                    elif name.lower().endswith(IMG_EXTENSIONS) and not name.startswith("."):
                        out.append((f"{rel}/{name}", entry.stat().st_size, label))
        finally:
            os.close(fd)
    return out
