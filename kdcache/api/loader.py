"""One process's batches of one epoch of a cache, the way ``kdcache train`` builds them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from kdcache.distributed import World
from kdcache.errors import UsageError
from kdcache.models.normalize import Normalize
from kdcache.student.batch import process_pairs
from kdcache.student.cache_source import CacheBatchSource
from kdcache.student.targets import TeacherTarget
from kdcache.student.teachers import choose_teachers
from kdcache.views.replay import open_replay

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Batch:
    """One optimiser step's views for this process, in whole mixing pairs (rows 2i, 2i+1 are
    mix(A, B, lam) and mix(B, A, lam)).

    ``images``: uint8 (B, H, W, 3), or float (B, 3, H, W) normalised for the model the loader was given;
    ``y_a``/``y_b``: int64 labels of each view's base and partner image, ``lam``: float32 share of the base
    image (the mixed, smoothed CE target is :func:`kdcache.KDLoss`'s); ``target``: the teacher's
    distribution on exactly these pixels; ``slots``: the views' slots in their cached epoch.
    """

    images: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor
    target: TeacherTarget
    slots: torch.Tensor

    def __len__(self) -> int:
        """Views in the batch (this process's share of the global batch)."""
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on ``device`` (Lightning's batch transfer calls this too)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        target = TeacherTarget(move(self.target.log_probs))
        return Batch(move(self.images), move(self.y_a), move(self.y_b), move(self.lam), target, move(self.slots))


class CacheLike(Protocol):
    """What a loader reads from a :class:`kdcache.Cache`: its reader, and where the images are."""

    reader: Any
    data: str | None


class CacheLoader:
    """Iterates over this process's :class:`Batch` es of one student epoch; ``len()`` is the steps per epoch.
    Get one from :meth:`kdcache.Cache.loader`, which documents the arguments."""

    def __init__(
        self,
        cache: CacheLike,
        epoch: int,
        global_batch: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        teacher: str | None = None,
        workers: int = 2,
        pin_memory: bool = False,
        device: str = "cpu",
        normalize_for: nn.Module | None = None,
        allow_epoch_reuse: bool = False,
    ):
        world = World.current()
        self.rank = world.rank if rank is None else int(rank)
        self.world_size = world.size if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise UsageError(f"rank {self.rank} is not one of world size {self.world_size}'s ranks")
        process_pairs(0, global_batch, self.rank, self.world_size)  # refuses batches that do not split in pairs
        reader = cache.reader
        choice = choose_teachers(reader, teacher)
        self.source = CacheBatchSource(
            reader,
            open_replay(reader.manifest, cache.data),
            np.asarray(reader.manifest.dataset["to_teacher"]),
            global_batch,
            self.rank,
            self.world_size,
            workers,
            with_topk=True,
            teachers=choice.source_layers(),
            pin_memory=pin_memory,
        )
        if epoch < 0 or (epoch >= len(self.source.epochs) and not allow_epoch_reuse):
            raise UsageError(
                f"epoch {epoch}: the cache holds {len(self.source.epochs)} complete epoch(s) for these teachers; "
                "pass allow_epoch_reuse=True to cycle through them (each pass in a fresh pair order), or "
                "extend the cache with `kdcache build ... --epochs N`"
            )
        self.epoch = epoch
        self.num_classes = int(reader.manifest.num_classes)
        self.device = torch.device(device)
        self.normalize = None if normalize_for is None else Normalize.for_model(normalize_for).to(self.device)

    def __len__(self) -> int:
        """Optimiser steps in the epoch (whole global batches; a last partial one is dropped)."""
        return self.source.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        """The epoch's batches for this process, in step order (a fresh DataLoader each time)."""
        for b in self.source.epoch_batches(self.epoch):
            b = b.to(self.device, non_blocking=self.source.pin_memory)
            assert b.topk_logprob is not None and b.topk_class is not None
            target = TeacherTarget.from_cached(b.topk_logprob, b.topk_class, self.num_classes, b.topk_layers)
            images = b.images if self.normalize is None else self.normalize(b.images)
            assert b.slots is not None
            yield Batch(images, b.y_a, b.y_b, b.lam, target, b.slots)
