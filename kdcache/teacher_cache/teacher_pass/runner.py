"""The teacher on its device: uint8 NHWC views -> the rows a cache stores (top-k log-probs and class ids,
format 2's tail, format 3's draws)."""

from __future__ import annotations

import numpy as np
import torch

from kdcache.models.normalize import Normalize
from kdcache.models.precision import TeacherForward
from kdcache.teacher_cache.store.draws import draw_uniforms, systematic_draws, with_draws
from kdcache.teacher_cache.store.fidelity import topk_fidelity
from kdcache.teacher_cache.store.topk import logits_to_topk, topk_to_probs
from kdcache.teacher_cache.teacher_pass.config import BuildConfig


class TeacherRunner:
    """uint8 NHWC views -> top-k log-probs and classes (and format 2's tail), on the teacher's device."""

    def __init__(self, model: torch.nn.Module, mean, std, cfg: BuildConfig):
        self.device = torch.device(cfg.device)
        self.channels_last = cfg.use_channels_last()
        self.k, self.tail, self.draws, self.seed = cfg.topk, cfg.tail(), cfg.draws_per_view(), cfg.seed
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

    def topk(self, images: torch.Tensor, epoch: int = 0, slots=None) -> tuple[np.ndarray, np.ndarray]:
        """The stored rows of a batch; format 3's draws are keyed by the views' ``epoch`` and ``slots``."""
        lp, cls, _ = self._rows(self.logits(images), epoch, slots)
        return lp, cls

    def topk_and_fidelity(
        self, images: torch.Tensor, epoch: int = 0, slots=None
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], np.ndarray | None]:
        """:meth:`topk` plus each view's figures (store/fidelity.py) from the full logits: (outside, kl),
        computed on the device so two floats per view come back, not C; format 3: (outside, noise) and
        the batch's summed target - teacher difference (C,), for the unit's bias."""
        logits = self.logits(images)
        lp, cls, full = self._rows(logits, epoch, slots)
        if full is None:
            with torch.inference_mode():
                lp_t, cls_t = logits_to_topk(logits, self.k, self.tail)
                outside, kl = topk_fidelity(logits, lp_t, cls_t)
            return lp, cls, (outside.cpu().numpy(), kl.cpu().numpy()), None
        teacher = np.exp(full.astype(np.float64))
        target = topk_to_probs(lp, cls, teacher.shape[-1]).astype(np.float64)
        outside = np.clip(1.0 - np.take_along_axis(teacher, cls[:, : self.k].astype(np.int64), -1).sum(-1), 0, 1)
        noise = np.abs(target - teacher).sum(-1)
        return lp, cls, (outside, noise), (target - teacher).sum(0)

    def _rows(self, logits: torch.Tensor, epoch: int, slots) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(log-probs, classes) rows as stored in memory, and for format 3 the (B, C) float32 log-probs the
        draws were made from (None otherwise)."""
        lp, cls = logits_to_topk(logits, self.k, self.tail)
        lp, cls = lp.cpu().numpy(), cls.cpu().numpy()
        if not self.draws:
            return lp, cls, None
        if slots is None:
            raise ValueError("format 3 draws are keyed by slot: pass the batch's epoch and slots")
        # Drawn on the host in float64: the same classes whatever the device (the logits aside).
        full = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        drawn = systematic_draws(full, cls, self.draws, draw_uniforms(self.seed, epoch, np.asarray(slots)))
        lp, cls = with_draws(lp, cls, drawn.astype(cls.dtype))
        return lp, cls, full
