"""Validation: the eval transform, an ImageFolder val set, and top-1/top-5 of a model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_eval
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdcache.data.imagefolder import ImageFolderSource
from kdcache.data.rgb import to_rgb
from kdcache.distributed import World
from kdcache.models.normalize import Normalize


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-min(5, C))
    loss: float  # plain cross-entropy against the hard labels
    count: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def eval_transform(image_size: int, crop_pct: float = 0.875, interpolation: str = "bicubic") -> Callable:
    """PIL image -> uint8 (H, W, 3) tensor: resize the short side to floor(image_size / crop_pct),
    centre-crop image_size (timm's eval transform, without normalisation: models normalise on device)."""
    tf = transforms_imagenet_eval(image_size, crop_pct=crop_pct, interpolation=interpolation, use_prefetcher=True)

    def apply(img: Image.Image) -> torch.Tensor:
        return tf(to_rgb(img)).permute(1, 2, 0).contiguous()  # CHW uint8 -> HWC

    return apply


class ValDataset(Dataset):
    """Items (uint8 (H, W, 3), label) of an ImageFolder val set; this process's share is rank::world."""

    def __init__(self, source: ImageFolderSource, transform: Callable, rank: int = 0, world_size: int = 1):
        self.source = source
        self.transform = transform
        self.ids = range(rank, len(source), world_size)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sid = self.ids[i]
        with self.source.open(sid) as img:
            return self.transform(img), self.source.label(sid)


def make_val_loader(
    root: str | os.PathLike[str],
    image_size: int,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    batch_size: int = 128,
    workers: int = 4,
    dist: World | None = None,
) -> DataLoader:
    """A loader over ``root`` (``<class>/<image>``; class ids = sorted folder names) yielding
    (uint8 (B, H, W, 3), int64 (B,)). Shards are disjoint and cover the set, so summing the counts
    over processes gives the exact accuracy."""
    dist = dist or World.current()
    ds = ValDataset(ImageFolderSource(root), eval_transform(image_size, crop_pct, interpolation), dist.rank, dist.size)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    normalize: Normalize,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    dist: World | None = None,
) -> EvalResult:
    """Top-1/top-5 (percent) over ``batches`` of (uint8 NHWC images, labels); counts are summed over
    processes, so each process must pass its own disjoint shard."""
    dist = dist or World()
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(normalize(images))
            logits = logits.float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == labels.unsqueeze(1)
            correct1 = correct1 + hit[:, 0].sum()
            correct5 = correct5 + hit.any(dim=1).sum()
            loss_sum = loss_sum + F.cross_entropy(logits, labels, reduction="sum").double()
            count += int(labels.shape[0])
    finally:
        model.train(was_training)
    c1, c5, ls, n = dist.all_reduce_sum([correct1, correct5, loss_sum, count], device)
    if n == 0:
        return EvalResult(0.0, 0.0, float("nan"), 0)
    return EvalResult(top1=100.0 * c1 / n, top5=100.0 * c5 / n, loss=ls / n, count=int(n))
