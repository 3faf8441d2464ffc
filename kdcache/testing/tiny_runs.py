"""Command lines (arguments after ``kdcache``) of a small, fast build and training run on CPU."""

from __future__ import annotations

from pathlib import Path


def tiny_build(data: Path, weights: Path, out: Path | str | None, *extra: str) -> list[str]:
    """Arguments of a small, fast build with a `test_resnet` teacher; later options in ``extra``
    override the defaults (click keeps the last value of a repeated option). ``out=None`` builds
    into the registry. One epoch unless ``extra`` says otherwise (the recipe's default is 610)."""
    return [
        "build",
        "--teacher",
        "test_resnet",
        "--teacher-weights",
        str(weights),
        "--data",
        str(data),
        *([] if out is None else ["--out", str(out)]),
        "--image-size",
        "32",
        "--topk",
        "3",
        "--unit-size",
        "6",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


def tiny_train(cache: Path, out: Path, *extra: str, reuse: bool = True) -> list[str]:
    """Arguments of a short `test_resnet` training run on a cache; ``extra`` overrides the defaults.
    ``reuse``: pass --allow-epoch-reuse, as small test caches often hold fewer epochs than the 2 trained."""
    return [
        "train",
        "--student",
        "test_resnet",
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--config",
        "seed",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--replay-check",
        "8",
        "--no-progress",
        *(["--allow-epoch-reuse"] if reuse else []),
        *extra,
    ]
