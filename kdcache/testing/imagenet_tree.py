"""An ImageFolder with ImageNet-1k's train layout (1,281,167 files in 1,000 WordNet-id folders) made of
tiny valid JPEGs, for timing what scales with the number of files rather than with their pixels.

Each class gets one small JPEG (a flat colour of its own); every other file of the class is a hard link
to it (a copy where the file system refuses links), so a million files cost seconds and almost no disk.
Every file is a valid, decodable image; paths and sizes (what a source fingerprint hashes) are
distinct per class. A marker file at the root makes a second call with the same parameters instant.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

IMAGENET_TRAIN_SAMPLES = 1_281_167
IMAGENET_CLASSES = 1000
MARKER = ".kdcache-tree.json"  # a dot file at the root: ImageFolderSource skips it


def class_names(num_classes: int) -> list[str]:
    """ImageNet-1k's WordNet ids (timm's list) for 1000 classes, else n00000000, n00000001, ..."""
    if num_classes == IMAGENET_CLASSES:
        from timm.data import ImageNetInfo

        return sorted(ImageNetInfo("imagenet-1k").label_names())
    return [f"n{c:08d}" for c in range(num_classes)]


def tiny_jpeg(label: int, size: int = 32) -> bytes:
    """A flat-coloured ``size`` px JPEG, its colour from ``label`` (a few hundred bytes)."""
    from PIL import Image

    colour = ((label * 37) % 256, (label * 91 + 64) % 256, (label * 53 + 128) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def per_class_counts(samples: int, num_classes: int) -> list[int]:
    """``samples`` spread over the classes, the first ``samples % num_classes`` get one more."""
    base, extra = divmod(samples, num_classes)
    return [base + (c < extra) for c in range(num_classes)]


def make_linked_imagefolder(
    root: Path, samples: int = IMAGENET_TRAIN_SAMPLES, num_classes: int = IMAGENET_CLASSES, size: int = 32
) -> tuple[Path, bool]:
    """(root, created): ``root/<wnid>/<wnid>_<i>.JPEG``, ``samples`` files in all. An existing tree with
    the same parameters (its marker says so) is kept; a partial or different one is replaced."""
    root = Path(root)
    want = {"samples": samples, "classes": num_classes, "size": size, "version": 1}
    marker = root / MARKER
    try:
        if json.loads(marker.read_text()) == want:
            return root, False
    except (OSError, ValueError):
        pass
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for label, (wnid, count) in enumerate(
        zip(class_names(num_classes), per_class_counts(samples, num_classes), strict=True)
    ):
        folder = root / wnid
        folder.mkdir()
        first = folder / f"{wnid}_0.JPEG"
        first.write_bytes(tiny_jpeg(label, size))
        source = os.fspath(first)
        base = os.fspath(folder)
        for i in range(1, count):
            target = f"{base}/{wnid}_{i}.JPEG"
            try:
                os.link(source, target)
            except OSError:  # no hard links here (or too many): a copy is as valid, only bigger
                shutil.copyfile(source, target)
    marker.write_text(json.dumps(want) + "\n")  # last: a tree without it is incomplete
    return root, True
