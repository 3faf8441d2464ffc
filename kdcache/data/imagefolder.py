"""ImageFolder source: ``root/<class>/<...>/<image>``, ids = sorted relative paths."""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
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
        files.sort(key=lambda t: t[0])
        self._classes = classes
        self._paths = [f[0] for f in files]
        self._sizes = [f[1] for f in files]
        self._labels = [f[2] for f in files]

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
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        for fn in filenames:
            if fn.lower().endswith(IMG_EXTENSIONS) and not fn.startswith("."):
                relpath = f"{prefix}/{fn}" if rel == "." else f"{prefix}/{Path(rel).as_posix()}/{fn}"
                out.append((relpath, os.stat(os.path.join(dirpath, fn)).st_size, label))
    return out
