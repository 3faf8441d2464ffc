"""The teacher's side of the KD loss: a full distribution per view, from logits or from a top-k cache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class TargetError(ValueError):
    """Teacher outputs that cannot be turned into a distribution."""


@dataclass(frozen=True)
class TeacherTarget:
    """Teacher log-probabilities at T=1, float32 (B, C); rows are normalised, ``-inf`` marks zero mass.

    Log-probs (rather than probs) keep the online path exact: ``log_softmax`` of the logits, with no
    round trip through probabilities that underflow.
    """

    log_probs: torch.Tensor

    def __post_init__(self) -> None:
        if self.log_probs.dim() != 2 or self.log_probs.dtype != torch.float32:
            raise TargetError(
                f"log_probs must be float32 (B, C), got {self.log_probs.dtype} {tuple(self.log_probs.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.log_probs.shape[1])

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> TeacherTarget:
        """Online mode: the teacher's raw logits (any float dtype)."""
        return cls(torch.log_softmax(logits.detach().float(), dim=1))

    @classmethod
    def from_topk(cls, topk_logprob: torch.Tensor, topk_class: torch.Tensor, num_classes: int) -> TeacherTarget:
        """Cached mode: rebuild a full distribution from the stored top-k log-probs and class ids.

        Rule (must match ``kdcache.teacher_cache.topk``): with top-k mass ``m = sum(exp(logprob))``,
          - ``k < C`` and ``m < 1``: the k classes keep their stored probabilities and the leftover
            ``1 - m`` is spread evenly over the other ``C - k`` classes;
          - otherwise (``k == C``, or fp16 rounding pushed ``m`` to >= 1): the k probabilities are
            divided by ``m`` and every other class gets 0.
        Every row therefore sums to 1 (up to float32 rounding).
        """
        if topk_logprob.dim() != 2 or topk_logprob.shape != topk_class.shape:
            raise TargetError(
                f"top-k log-probs and classes must both be (B, k), got {tuple(topk_logprob.shape)} and "
                f"{tuple(topk_class.shape)}"
            )
        k = int(topk_logprob.shape[1])
        if not 1 <= k <= num_classes:
            raise TargetError(f"top-k width {k} must be in 1..{num_classes}")
        cls_ids = topk_class.long()
        if cls_ids.numel() and (int(cls_ids.min()) < 0 or int(cls_ids.max()) >= num_classes):
            raise TargetError(f"top-k class ids outside 0..{num_classes - 1}")
        lp = topk_logprob.float()
        mass = lp.exp().sum(dim=1, keepdim=True)
        # (B, 1) log of the leftover per tail class; -inf where there is no leftover.
        if k < num_classes:
            rest = (1.0 - mass).clamp_min(0.0)
            tail = torch.log(rest) - math.log(num_classes - k)
        else:
            tail = torch.full_like(mass, -math.inf)
        no_tail = tail == -math.inf
        top = torch.where(no_tail, lp - torch.log(mass), lp)
        out = tail.expand(-1, num_classes).clone()
        out.scatter_(1, cls_ids, top)
        return cls(out)

    def log_probs_at(self, temperature: float) -> torch.Tensor:
        """Teacher log-probs at temperature T: log_softmax(log p / T) (the same as softmax(z / T))."""
        if temperature == 1.0:
            return self.log_probs
        return torch.log_softmax(self.log_probs / temperature, dim=1)
