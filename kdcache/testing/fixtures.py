"""Small real inputs for builds: an ImageFolder of photo crops and a tiny timm teacher (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dataset(root: Path, classes: list[str], per_class: int, seed: int = 0) -> Path:
    """Real photo crops (scikit-learn's sample images) of varied sizes, one folder per class; needs
    scikit-learn (the dev extra)."""
    from PIL import Image

    from kdcache.testing.photos import sklearn_photos

    imgs = list(sklearn_photos().values())
    g = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            src = imgs[(c + i) % len(imgs)]
            h, w = int(g.integers(40, 90)), int(g.integers(40, 90))
            y, x = int(g.integers(0, src.shape[0] - 2 * h)), int(g.integers(0, src.shape[1] - 2 * w))
            Image.fromarray(np.ascontiguousarray(src[y : y + 2 * h : 2, x : x + 2 * w : 2])).save(
                d / f"img{i:03d}.jpg", quality=90
            )
    return root


def write_teacher(path: Path, num_classes: int, arch: str = "test_resnet", seed: int = 0) -> Path:
    """A timm model at a seeded random init, saved in timm's key layout (what --teacher-weights loads)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    torch.save(model.state_dict(), path)
    return path
