"""The demo's teacher: a timm model at random init, trained on the digits with plain cross-entropy.

Not kdcache's student trainer on purpose: the teacher is an input to kdcache (in real use, a
pretrained model), so it gets the simplest loop that makes a strong one. Light augmentation only
(a random affine: rotation, scale and shift of a few pixels, on the whole in-memory batch), AdamW with
a one-cycle schedule, seeded. Weights are saved in timm's key layout, as ``kdcache build
--teacher-weights`` expects.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from kdcache.data.imagefolder import ImageFolderSource
from kdcache.data.rgb import to_rgb
from kdcache.models.normalize import Normalize
from kdcache.student.evaluate import evaluate, make_val_loader


@dataclass(frozen=True)
class TeacherSpec:
    model: str = "resnet18"
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    max_rotate_deg: float = 10.0
    max_scale: float = 0.1  # scale in [1 - s, 1 + s]
    max_shift: float = 0.08  # fraction of the image size (0.08 x 32 = 2.6 px)
    seed: int = 0


@dataclass(frozen=True)
class TeacherResult:
    weights: Path
    model: str
    top1: float
    top5: float
    seconds: float
    epochs: int


def load_folder(root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder as uint8 (N, H, W, 3) and int64 labels (sorted folder order)."""
    src = ImageFolderSource(root)
    images, labels = [], []
    for i in range(len(src)):
        with src.open(i) as img:
            images.append(np.asarray(to_rgb(img)))
        labels.append(src.label(i))
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def random_affine(x: torch.Tensor, spec: TeacherSpec, gen: torch.Generator) -> torch.Tensor:
    """Rotate/scale/shift each float NCHW image by a small random amount (zero padding = black)."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    angle = u[:, 0] * math.radians(spec.max_rotate_deg)
    scale = 1 + u[:, 1] * spec.max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, u[:, 2] * 2 * spec.max_shift], 1),
            torch.stack([sin, cos, u[:, 3] * 2 * spec.max_shift], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train_teacher(
    train_root: str | Path,
    val_root: str | Path,
    out: str | Path,
    spec: TeacherSpec = TeacherSpec(),
    eval_crop_pct: float = 1.0,
    eval_interpolation: str = "bicubic",
    log=print,
) -> TeacherResult:
    """Train ``spec.model`` from scratch, save its state dict to ``out`` (.pth), return val top-1."""
    t0 = time.perf_counter()
    images, labels = load_folder(train_root)
    num_classes = int(labels.max()) + 1
    size = int(images.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = timm.create_model(spec.model, pretrained=False, num_classes=num_classes)
    normalize = Normalize.for_model(model)
    gen = torch.Generator().manual_seed(spec.seed)
    steps_per_epoch = len(labels) // spec.batch_size
    total = steps_per_epoch * spec.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=total, pct_start=0.15)
    model.train()
    for epoch in range(spec.epochs):
        order = torch.randperm(len(labels), generator=gen)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * spec.batch_size : (step + 1) * spec.batch_size]
            x = normalize(images[idx])
            x = random_affine(x, spec, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
        log(f"  teacher epoch {epoch + 1}/{spec.epochs}: train loss {loss_sum / steps_per_epoch:.3f}")
    model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out)
    val = make_val_loader(val_root, size, eval_crop_pct, eval_interpolation, batch_size=256, workers=0)
    result = evaluate(model, val, normalize, torch.device("cpu"))
    return TeacherResult(out, spec.model, result.top1, result.top5, time.perf_counter() - t0, spec.epochs)
