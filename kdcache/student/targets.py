"""The teacher's side of the KD loss: a full distribution per view, from logits or from a top-k cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcache.teacher_cache.store.topk import topk_to_probs


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

    @property
    def probs(self) -> torch.Tensor:
        """The teacher's probabilities at T = 1, float32 (B, C); rows sum to 1."""
        return self.log_probs.exp()

    @classmethod
    def from_cached(
        cls,
        topk_logprob: torch.Tensor,
        topk_class: torch.Tensor,
        num_classes: int,
        layers: tuple[tuple[int, float], ...] | None = None,
    ) -> TeacherTarget:
        """A cached batch's target, as the trainer builds it: one teacher's rows (:meth:`from_topk`), or
        several teachers' side by side with their (k, weight) (:meth:`from_topk_mixture`)."""
        if layers is None:
            return cls.from_topk(topk_logprob, topk_class, num_classes)
        return cls.from_topk_mixture(topk_logprob, topk_class, num_classes, layers)

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> TeacherTarget:
        """Online mode: the teacher's raw logits (any float dtype)."""
        return cls(torch.log_softmax(logits.detach().float(), dim=1))

    @classmethod
    def from_topk(cls, topk_logprob: torch.Tensor, topk_class: torch.Tensor, num_classes: int) -> TeacherTarget:
        """Cached mode: rebuild a full distribution from the stored top-k log-probs and class ids.

        Rule (:func:`kdcache.teacher_cache.store.topk.topk_to_probs`): with top-k mass ``m = sum(exp(logprob))``,
          - ``k < C`` and ``m < 1``: the k classes keep their stored probabilities and the leftover
            ``1 - m`` is spread evenly over the other ``C - k`` classes;
          - otherwise (``k == C``, or fp16 rounding pushed ``m`` to >= 1): the k probabilities are
            divided by ``m`` and every other class gets 0.
        Every row therefore sums to 1 (up to float32 rounding).
        """
        return cls(torch.log(_topk_probs(topk_logprob, topk_class, num_classes)))

    @classmethod
    def from_topk_mixture(
        cls,
        topk_logprob: torch.Tensor,
        topk_class: torch.Tensor,
        num_classes: int,
        layers: tuple[tuple[int, float], ...],
    ) -> TeacherTarget:
        """Several teachers: their top-k rows side by side (``layers``: each one's (k, weight), in column
        order). Each teacher's full distribution is rebuilt by :meth:`from_topk`'s rule, and the target is
        their weighted mean in probability space (weights normalised to sum to 1)."""
        if topk_logprob.dim() != 2 or topk_logprob.shape != topk_class.shape:
            raise TargetError(
                f"top-k log-probs and classes must both be (B, k), got {tuple(topk_logprob.shape)} and "
                f"{tuple(topk_class.shape)}"
            )
        widths = [int(k) for k, _ in layers]
        if not layers or sum(widths) != topk_logprob.shape[1]:
            raise TargetError(f"layer widths {widths} do not add up to the {topk_logprob.shape[1]} top-k columns")
        total = float(sum(w for _, w in layers))
        if not total > 0 or any(not w > 0 for _, w in layers):
            raise TargetError(f"teacher weights must be > 0, got {[w for _, w in layers]}")
        mix = None
        for (_, w), lp, cl in zip(layers, topk_logprob.split(widths, 1), topk_class.split(widths, 1), strict=True):
            p = _topk_probs(lp, cl, num_classes).double() * (w / total)
            mix = p if mix is None else mix + p
        assert mix is not None
        return cls(torch.log(mix.float()))

    def log_probs_at(self, temperature: float) -> torch.Tensor:
        """Teacher log-probs at temperature T: log_softmax(log p / T) (the same as softmax(z / T))."""
        if temperature == 1.0:
            return self.log_probs
        return torch.log_softmax(self.log_probs / temperature, dim=1)


def _topk_probs(topk_logprob: torch.Tensor, topk_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 (B, C) probabilities from one teacher's top-k rows, checked."""
    if topk_logprob.dim() != 2 or topk_logprob.shape != topk_class.shape:
        raise TargetError(
            f"top-k log-probs and classes must both be (B, k), got {tuple(topk_logprob.shape)} and "
            f"{tuple(topk_class.shape)}"
        )
    if int(topk_logprob.shape[1]) < 1:  # wider than C is fine: format 3 repeats a class drawn n times
        raise TargetError("top-k rows must have at least one column")
    cls_ids = topk_class.long()
    if cls_ids.numel() and (int(cls_ids.min()) < 0 or int(cls_ids.max()) >= num_classes):
        raise TargetError(f"top-k class ids outside 0..{num_classes - 1}")
    # The one reconstruction rule, shared with `kdcache show --dense` and every reader of the format.
    probs = topk_to_probs(topk_logprob, cls_ids, num_classes)
    return probs
