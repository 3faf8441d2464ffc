"""The few torch.distributed helpers the trainer needs; everything degrades to one process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> DistInfo:
        """From the initialised default process group (torchrun sets LOCAL_RANK), else one process."""
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return cls()


def all_reduce_sum(values: Sequence[float | torch.Tensor], device: torch.device, dist: DistInfo) -> list[float]:
    """Sum scalars over processes (float64, one collective); identity for one process."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    if dist.enabled:
        tdist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def barrier(dist: DistInfo) -> None:
    if dist.enabled:
        tdist.barrier()
