"""Checkpoint files: atomic writes, loading, and the uniform average of several checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kdcache.storage.atomic import atomic_file

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the others / the model."""


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` all-or-nothing: a crash or exception leaves the previous file or the new one at
    ``path``, never a half-written one (:func:`~kdcache.storage.atomic.atomic_file`)."""
    with atomic_file(path) as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (tensors and plain Python values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    fmt = obj.get("format", CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {fmt}; this kdcache reads format {CHECKPOINT_FORMAT}")
    return obj


def state_dict_of(ckpt: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The weights in a checkpoint: its ``state_dict`` entry, or the mapping itself if it is one."""
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("checkpoint has no state_dict of tensors")
    return sd


def average_checkpoints(paths: Sequence[str | os.PathLike[str]]) -> dict[str, torch.Tensor]:
    """Uniform average of the state dicts in ``paths`` (each file: {"state_dict": ...} or a bare one).

    Floating tensors are summed in float64 and divided by n, then cast back to their dtype. Integer
    and bool tensors cannot be averaged meaningfully; the only ones in timm models are counters
    (BatchNorm's ``num_batches_tracked``), so they take the elementwise maximum — the count of the
    most-trained checkpoint. Keys, shapes and dtypes must agree across all files.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    acc: dict[str, torch.Tensor] = {}
    ref: dict[str, tuple[torch.dtype, torch.Size]] = {}
    for i, p in enumerate(paths):
        sd = state_dict_of(load_checkpoint(p))
        if i == 0:
            ref = {k: (v.dtype, v.shape) for k, v in sd.items()}
        elif set(sd) != set(ref):
            diff = sorted(set(sd) ^ set(ref))
            raise CheckpointError(f"{p} has different keys from {paths[0]}: {', '.join(diff[:5])}")
        for k, v in sd.items():
            if (v.dtype, v.shape) != ref[k]:
                raise CheckpointError(f"{p}: {k} is {v.dtype} {tuple(v.shape)}, expected {ref[k]}")
            if v.is_floating_point() or v.is_complex():
                v64 = v.to(torch.complex128 if v.is_complex() else torch.float64)
                acc[k] = v64 if i == 0 else acc[k].add_(v64)
            else:
                acc[k] = v.clone() if i == 0 else torch.maximum(acc[k], v)
    n = len(paths)
    return {k: (v.div_(n).to(ref[k][0]) if (v.is_floating_point() or v.is_complex()) else v) for k, v in acc.items()}
