"""Evaluation: the val transform, the ImageFolder loader, top-1/top-5, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from kdcache.models.normalize import Normalize
from kdcache.student.evaluate import eval_transform, evaluate, make_val_loader


def test_eval_transform_is_resize_then_centre_crop():
    g = np.random.default_rng(0)
    img = Image.fromarray(g.integers(0, 256, size=(50, 70, 3), dtype=np.uint8))
    out = eval_transform(32, crop_pct=0.875, interpolation="bicubic")(img)
    assert out.dtype == torch.uint8 and out.shape == (32, 32, 3)
    ref = transforms.Compose(
        [transforms.Resize(36, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(32)]
    )(img)  # floor(32 / 0.875) = 36
    assert torch.equal(out, torch.from_numpy(np.array(ref)))
    # the seed recipe: 224 px views are evaluated on 256 -> 224
    big = Image.fromarray(g.integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    assert eval_transform(224)(big).shape == (224, 224, 3)


class _IndexModel(nn.Module):
    """Reads the sample index from pixel (0, 0) and returns fixed logits for it."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].round().long()]


def test_top1_top5_against_numpy():
    g = np.random.default_rng(1)
    n, c = 40, 8
    logits = torch.from_numpy(g.normal(size=(n, c)).astype(np.float32))
    labels = torch.from_numpy(g.integers(0, c, n))
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 4, 4, 3).contiguous()
    batches = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, n, 16)]
    identity = Normalize((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # x -> x: pixel = index
    res = evaluate(_IndexModel(logits), batches, identity, torch.device("cpu"))
    order = np.argsort(-logits.numpy(), axis=1)
    assert res.count == n
    assert res.top1 == pytest.approx(100 * np.mean(order[:, 0] == labels.numpy()))
    assert res.top5 == pytest.approx(100 * np.mean([labels[i].item() in order[i, :5] for i in range(n)]))
    assert res.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


def test_normalize_matches_timm_convention():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8, generator=g)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    out = Normalize(mean, std)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous()
    cl = Normalize(mean, std, channels_last=True)(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)


def test_imagefolder_val_loader(tmp_path):
    g = np.random.default_rng(2)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(g.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    loader = make_val_loader(tmp_path, 16, batch_size=4, workers=0)
    got = list(loader)
    assert [b[0].shape[0] for b in got] == [4, 2]
    assert got[0][0].dtype == torch.uint8 and got[0][0].shape[1:] == (16, 16, 3)
    assert torch.cat([b[1] for b in got]).tolist() == [0, 0, 0, 1, 1, 1]
