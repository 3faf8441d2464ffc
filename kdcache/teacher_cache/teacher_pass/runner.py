"""The teacher on its device: uint8 NHWC views -> top-k log-probs and class ids."""

from __future__ import annotations

import numpy as np
import torch

from kdcache.models.normalize import Normalize
from kdcache.models.precision import TeacherForward
from kdcache.teacher_cache.store.fidelity import topk_fidelity
from kdcache.teacher_cache.store.topk import logits_to_topk
from kdcache.teacher_cache.teacher_pass.config import BuildConfig


class TeacherRunner:
    """uint8 NHWC views -> top-k log-probs and classes (and format 2's tail), on the teacher's device."""

    def __init__(self, model: torch.nn.Module, mean, std, cfg: BuildConfig):
        self.device = torch.device(cfg.device)
        self.channels_last = cfg.use_channels_last()
        self.k, self.tail = cfg.topk, cfg.tail()
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # Body under autocast, head in fp32 (TeacherForward): the precision the manifest records.
        forward = TeacherForward(model, cfg.amp_dtype(), True, self.device.type)
        self.precision = forward.precision
        self.model = torch.compile(forward) if cfg.compile else forward
        self.normalize = Normalize(mean, std, self.channels_last).to(self.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(images.to(self.device, non_blocking=True))

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))

    def topk(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        lp, cls = logits_to_topk(self.logits(images), self.k, self.tail)
        return lp.cpu().numpy(), cls.cpu().numpy()

    def topk_and_fidelity(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`topk` plus each view's mass outside the top-k and reconstruction KL (store/fidelity.py),
        computed on the device from the full logits: two floats per view come back, not C."""
        logits = self.logits(images)
        lp, cls = logits_to_topk(logits, self.k, self.tail)
        with torch.inference_mode():
            outside, kl = topk_fidelity(logits, lp, cls)
        return lp.cpu().numpy(), cls.cpu().numpy(), outside.cpu().numpy(), kl.cpu().numpy()
