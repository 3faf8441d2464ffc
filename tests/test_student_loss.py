"""KDLoss against hand computation, and the cached (top-k) target against the online one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcache.student.loss import KDLoss, mixed_smooth_target
from kdcache.student.targets import TargetError, TeacherTarget
from kdcache.teacher_cache.store.topk import topk_to_probs

FP16_HALF_ULP = 2.0**-11  # relative rounding error of float16 (round to nearest, normal numbers)


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_literal_example():
    """Student uniform over 4 classes; teacher (0.5, 0.25, 0.25, 0); y_a=0, y_b=1, lam=0.75."""
    logits = torch.zeros(1, 4)
    teacher = TeacherTarget(torch.log(_t([[0.5, 0.25, 0.25, 0.0]])))
    loss = KDLoss(4)(logits, _t([0], torch.int64), _t([1], torch.int64), _t([0.75]), teacher)
    # CE against any distribution with a uniform student is log 4.
    assert loss.ce.item() == pytest.approx(math.log(4), rel=1e-6)
    # KL = 0.5 log(0.5 / 0.25) + 2 * 0.25 log(1) + 0 = 0.5 log 2 (the zero-mass class contributes 0).
    assert loss.kd.item() == pytest.approx(0.5 * math.log(2), rel=1e-6)
    assert loss.total.item() == pytest.approx(0.8 * 0.5 * math.log(2) + 0.2 * math.log(4), rel=1e-6)


def test_mixed_smooth_target_matches_timm():
    from timm.data.mixup import mixup_target

    y = _t([3, 1, 4, 1], torch.int64)  # pairs (3, 1), (4, 1): flip within pairs = timm's batch flip for B=2
    for pair in (slice(0, 2), slice(2, 4)):
        ya = y[pair]
        yb = ya.flip(0)
        lam = 0.3
        ours = mixed_smooth_target(ya, yb, torch.full((2,), lam), 6, 0.1)
        theirs = mixup_target(ya, 6, lam=lam, smoothing=0.1)
        torch.testing.assert_close(ours, theirs)


def _hand_loss(logits, y_a, y_b, lam, teacher_logits, kd_w, ce_w, T, eps):
    """Plain-Python reference: no torch, no vectorisation."""
    B, C = len(logits), len(logits[0])

    def log_softmax(z):
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        return [v - lse for v in z]

    ce = kd = 0.0
    for i in range(B):
        ls = log_softmax(logits[i])
        target = [
            lam[i] * (1 - eps) * (c == y_a[i]) + (1 - lam[i]) * (1 - eps) * (c == y_b[i]) + eps / C for c in range(C)
        ]
        ce += -sum(t * v for t, v in zip(target, ls, strict=True))
        if teacher_logits is not None:
            lt = log_softmax([v / T for v in teacher_logits[i]])
            lsT = log_softmax([v / T for v in logits[i]])
            kd += sum(math.exp(a) * (a - b) for a, b in zip(lt, lsT, strict=True)) * T * T
    ce, kd = ce / B, kd / B
    if teacher_logits is None:
        return ce, None, ce
    return ce, kd, kd_w * kd + ce_w * ce


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("with_teacher", [True, False])
def test_against_hand_computation(T, with_teacher):
    g = np.random.default_rng(0)
    B, C = 6, 5
    logits = g.normal(0, 2, (B, C)).tolist()
    teacher = g.normal(0, 3, (B, C)).tolist() if with_teacher else None
    y_a = g.integers(0, C, B).tolist()
    y_b = [y_a[i ^ 1] for i in range(B)]
    lam = [v for v in g.uniform(0, 1, B // 2) for _ in (0, 1)]
    loss_fn = KDLoss(C, kd_weight=0.7, ce_weight=0.4, temperature=T, label_smoothing=0.1)
    tgt = TeacherTarget.from_logits(_t(teacher)) if with_teacher else None
    parts = loss_fn(_t(logits), _t(y_a, torch.int64), _t(y_b, torch.int64), _t(lam), tgt)
    ce, kd, total = _hand_loss(logits, y_a, y_b, lam, teacher, 0.7, 0.4, T, 0.1)
    assert parts.ce.item() == pytest.approx(ce, rel=1e-5)
    assert parts.total.item() == pytest.approx(total, rel=1e-5)
    if with_teacher:
        assert parts.kd.item() == pytest.approx(kd, rel=1e-5, abs=1e-7)
    else:
        assert parts.kd is None  # mode none: CE alone, weight 1.0
        assert parts.total.item() == pytest.approx(ce, rel=1e-6)


def test_gradient_flows_only_to_student():
    logits = torch.randn(4, 5, requires_grad=True)
    t_logits = torch.randn(4, 5, requires_grad=True)
    parts = KDLoss(5)(
        logits,
        _t([0, 1, 1, 0], torch.int64),
        _t([1, 0, 0, 1], torch.int64),
        _t([0.5] * 4),
        TeacherTarget.from_logits(t_logits),
    )
    parts.total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert t_logits.grad is None


# ---- top-k reconstruction -------------------------------------------------------------------


def _topk(teacher_logits: torch.Tensor, k: int):
    lp = torch.log_softmax(teacher_logits, dim=1)
    top = lp.topk(k, dim=1)
    return top.values.half(), top.indices.to(torch.int16)


def test_topk_rebuild_rule():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 12, generator=g) * 3
    lp16, cls = _topk(z, 4)
    p = TeacherTarget.from_topk(lp16, cls, 12).log_probs.exp()
    torch.testing.assert_close(p.sum(1), torch.ones(8), rtol=0, atol=1e-6)
    torch.testing.assert_close(p.gather(1, cls.long()), lp16.float().exp())  # top-k kept as stored
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, cls.long(), False)
    tail = p[mask].view(8, 8)
    expected = (1 - lp16.float().exp().sum(1, keepdim=True)) / 8
    torch.testing.assert_close(tail, expected.expand(8, 8))  # leftover spread evenly


def test_topk_mass_over_one_is_renormalised():
    lp = torch.log(_t([[0.7, 0.3 + 1e-3]])).half()  # fp16 rounding can push the mass past 1
    p = TeacherTarget.from_topk(lp, _t([[2, 0]], torch.int32), 4).log_probs.exp()
    assert p[0, 1].item() == 0 and p[0, 3].item() == 0
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_topk_rejects_bad_ids():
    with pytest.raises(TargetError, match="class ids"):
        TeacherTarget.from_topk(torch.zeros(1, 2, dtype=torch.float16), _t([[0, 7]], torch.int64), 5)
    with pytest.raises(TargetError, match="at least one column"):
        TeacherTarget.from_topk(torch.zeros(1, 0, dtype=torch.float16), torch.zeros(1, 0, dtype=torch.int64), 5)
    # rows wider than the classes are format 3's repeated draws: a class drawn twice holds twice the mass
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.25]])).half()
    probs = TeacherTarget.from_topk(lp, _t([[0, 1, 1]], torch.int64), 2).probs
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.5]]), atol=1e-3, rtol=0)  # float16 log-probs


def test_matches_the_store_reconstruction():
    z = torch.randn(5, 20, generator=torch.Generator().manual_seed(2)) * 3
    lp16, cls = _topk(z, 6)
    target = TeacherTarget.from_topk(lp16, cls, 20)
    for T in (1.0, 2.0, 0.5):
        ours = target.log_probs_at(T).exp().numpy()
        theirs = np.asarray(topk_to_probs(lp16.numpy(), cls.numpy(), 20, temperature=T), dtype=np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


# ---- cached vs online ------------------------------------------------------------------------


def _setup(k: int, B: int = 32, C: int = 20, scale: float = 3.0):
    g = torch.Generator().manual_seed(k)
    teacher = torch.randn(B, C, generator=g) * scale
    student = torch.randn(B, C, generator=g) * 2
    y_a = torch.randint(0, C, (B,), generator=g)
    y_b = y_a.view(-1, 2).flip(1).reshape(-1)
    lam = torch.rand(B // 2, generator=g).repeat_interleave(2)
    return teacher, student, y_a, y_b, lam


def _fp16_bound(log_p: torch.Tensor, log_s: torch.Tensor) -> float:
    """Batch-mean bound on |KL(q||s) - KL(p||s)| when q is p rebuilt from fp16 log-probs (k = C).

    Stored log p_i has |error| <= d_i = 2^-11 |log p_i|; the mass m = sum p_i e^(err_i) is within
    mu = sum p_i (e^(d_i) - 1) of 1, and dividing by it moves every log by <= |log m| <= -log(1 - mu).
    So |log q_i - log p_i| <= D_i = d_i - log(1 - mu), |q_i - p_i| <= p_i (e^(D_i) - 1), and
    KL(q||s) - KL(p||s) = sum (q_i - p_i)(log p_i - log s_i) + sum q_i (log q_i - log p_i)
    is at most sum p_i (e^(D_i) - 1) |log p_i - log s_i| + sum p_i e^(D_i) D_i per view.
    """
    p = log_p.exp().double()
    d = FP16_HALF_ULP * log_p.abs().double()
    mu = (p * d.expm1()).sum(1, keepdim=True)
    D = d - torch.log1p(-mu)
    per_view = (p * D.expm1() * (log_p - log_s).abs().double()).sum(1) + (p * D.exp() * D).sum(1)
    return per_view.mean().item() + 1e-6  # + float32 summation noise


@pytest.mark.parametrize("scale", [0.3, 3.0, 10.0])
def test_cached_full_k_equals_online_within_fp16(scale):
    """k = C: the only difference is the fp16 rounding of the stored log-probs (see _fp16_bound)."""
    teacher, student, y_a, y_b, lam = _setup(0, scale=scale)
    C = teacher.shape[1]
    loss = KDLoss(C)
    online = loss(student, y_a, y_b, lam, TeacherTarget.from_logits(teacher))
    cached = loss(student, y_a, y_b, lam, TeacherTarget.from_topk(*_topk(teacher, C), C))
    bound = _fp16_bound(torch.log_softmax(teacher, 1), torch.log_softmax(student, 1))
    assert abs(cached.kd.item() - online.kd.item()) <= bound
    assert bound < 0.01 * max(online.kd.item(), 0.1)  # and the bound is tight enough to mean something
    assert cached.ce.item() == online.ce.item()


@pytest.mark.parametrize("k", [1, 5, 10, 19])
def test_cached_topk_close_to_online(k):
    """k < C: the tail mass M (outside the top-k) is spread evenly instead of as the teacher had it.

    Per view, KL(q||s) - KL(p||s) = sum_tail (q - p) (-log s) + sum_tail (q log q - p log p), with
    |first| <= M (max_tail log s - min_tail log s) and second in [-M log(C - k), 0]. So
    |dKL| <= M (log(C - k) + range_tail log s), plus the fp16 term above; the test checks the batch
    mean against the mean of that per-view bound (+ the fp16 bound, first order).
    """
    teacher, student, y_a, y_b, lam = _setup(k)
    C = teacher.shape[1]
    loss = KDLoss(C)
    online = loss(student, y_a, y_b, lam, TeacherTarget.from_logits(teacher))
    lp16, cls = _topk(teacher, k)
    cached = loss(student, y_a, y_b, lam, TeacherTarget.from_topk(lp16, cls, C))
    p = torch.softmax(teacher, 1)
    log_s = torch.log_softmax(student, 1)
    tail = torch.ones_like(p, dtype=torch.bool).scatter_(1, cls.long(), False)
    M = (p * tail).sum(1)
    rng = torch.where(tail, log_s, -math.inf).amax(1) - torch.where(tail, log_s, math.inf).amin(1)
    per_view = M * (math.log(C - k) + rng)
    fp16 = _fp16_bound(torch.log_softmax(teacher, 1), log_s)
    diff = abs(cached.kd.item() - online.kd.item())
    assert diff <= per_view.mean().item() + fp16
    assert diff > 0  # the tail really is approximated
    assert cached.ce.item() == online.ce.item()
