"""The student's loss, one module for the three modes (cached, online, none)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.recipe import TrainConfig
from kdcache.student.targets import TeacherTarget


@dataclass(frozen=True)
class LossParts:
    """Scalar parts of one batch's loss; ``kd`` is None without a teacher (mode none)."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor | None = None

    def detached(self) -> dict[str, torch.Tensor]:
        """The parts as detached scalars keyed loss, ce (and kd): what logs and progress bars show."""
        out = {"loss": self.total.detach(), "ce": self.ce.detach()}
        if self.kd is not None:
            out["kd"] = self.kd.detach()
        return out


def mixed_smooth_target(
    y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, num_classes: int, smoothing: float
) -> torch.Tensor:
    """lam * smooth(y_a) + (1 - lam) * smooth(y_b), per view; smooth() as timm's mixup_target:
    off = smoothing / C, on = 1 - smoothing + off."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    a = torch.full((y_a.shape[0], num_classes), off, dtype=torch.float32, device=y_a.device)
    b = a.clone()
    a.scatter_(1, y_a.long().unsqueeze(1), on)
    b.scatter_(1, y_b.long().unsqueeze(1), on)
    lam = lam.float().unsqueeze(1)
    return lam * a + (1.0 - lam) * b


def kl_teacher_student(teacher: TeacherTarget, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of KL(teacher_T || student_T), times T^2.

    T^2 keeps the gradient scale of the soft term independent of T (Hinton et al.); at T=1 it is 1.
    Classes the teacher gives zero mass (possible for a rebuilt top-k target) contribute 0.
    """
    log_s = torch.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = teacher.log_probs_at(temperature)
    p = log_t.exp()
    log_t = torch.where(p > 0, log_t, torch.zeros_like(log_t))  # 0 * (-inf) would be nan
    kl = (p * (log_t - log_s)).sum(dim=1).mean()
    return kl * (temperature * temperature)


class KDLoss(nn.Module):
    """kd_weight * T^2 * KL(teacher_T || student_T) + ce_weight * CE(student, mixed smoothed labels).

    Without a teacher target (mode none) the loss is the CE term alone, with weight 1.0: the plain
    baseline is ordinary supervised training at the recipe's learning rate, not 0.2 x CE.
    The CE term is never tempered. Logits are upcast to float32 (safe under AMP).
    """

    def __init__(
        self,
        num_classes: int,
        kd_weight: float = 0.8,
        ce_weight: float = 0.2,
        temperature: float = 1.0,
        label_smoothing: float = 0.1,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.kd_weight = float(kd_weight)
        self.ce_weight = float(ce_weight)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> KDLoss:
        """The loss of a recipe's training part (``recipe.train``): its weights, temperature and smoothing."""
        return cls(num_classes, cfg.kd_weight, cfg.ce_weight, cfg.temperature, cfg.label_smoothing)

    def forward(
        self,
        logits: torch.Tensor,
        y_a: torch.Tensor,
        y_b: torch.Tensor,
        lam: torch.Tensor,
        teacher: TeacherTarget | None = None,
    ) -> LossParts:
        """The loss of student ``logits`` (B, C) on mixed views with labels ``y_a``/``y_b`` and base share
        ``lam``; ``teacher``: the target of the same views (None: the CE term alone, weight 1)."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}), got {tuple(logits.shape)}")
        target = mixed_smooth_target(y_a, y_b, lam, self.num_classes, self.label_smoothing)
        ce = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        if teacher is None:
            return LossParts(total=ce, ce=ce)
        if teacher.num_classes != self.num_classes:
            raise ValueError(f"teacher has {teacher.num_classes} classes, the student {self.num_classes}")
        kd = kl_teacher_student(teacher, logits, self.temperature)
        return LossParts(total=self.kd_weight * kd + self.ce_weight * ce, ce=ce, kd=kd)
