"""``kdcache verify``: re-render sampled views, compare digests, re-run the teacher, compare top-k."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kdcache.models.normalize import Normalize
from kdcache.models.precision import FP32, TeacherForward, parse_precision
from kdcache.models.teacher import TeacherError, create_teacher
from kdcache.teacher_cache.store.draws import check_draws, draw_uniforms
from kdcache.teacher_cache.store.tail import GUARD_SLACK, guard_margin, tail_bounds
from kdcache.views.replay import Mismatch, open_replay, replay_sample

# fp16 log-probs are exact to ~1e-3 relative, so stored probabilities are within ~1e-4 absolute of
# the teacher's; 1e-3 leaves room for float32 differences between the build's and this run's batch.
PROB_TOLERANCE = 1e-3
# Under autocast two forwards of one view differ with the batch and the kernels chosen (and verify may
# run on another device than the build): the tolerance grows with the rounding of the body's activations.
# benchmarks/teacher_precision.py: fp16 autocast is off fp32 by up to ~1e-2, bf16 by up to ~8e-2 (EfficientNet-Lite0).
AUTOCAST_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 1.5e-1}


# A tail code is checked in log space: a code one off is 0.5 nats away. fp32 forwards agree to ~1e-5
# relative; under autocast small probabilities move by a few % (fp16) to tens of % (bf16), so there a
# wrong code is caught only when it is off by more than the tolerance allows.
LOG_TOLERANCE = {None: 0.02, torch.float16: 0.1, torch.bfloat16: 0.4}


def log_tolerance(precision: str) -> float:
    """How many nats verify lets a fresh tail log-prob lie outside its code's bin."""
    return LOG_TOLERANCE[parse_precision(precision)[0]]


def tolerance(precision: str) -> float:
    """How far verify lets stored and fresh probabilities differ for a teacher run at ``precision``."""
    dtype, _ = parse_precision(precision)
    return PROB_TOLERANCE if dtype is None else AUTOCAST_TOLERANCE[dtype]


def manifest_precision(m) -> str:
    """The teacher's precision a cache records; caches older than the field were checked in fp32."""
    return m.teacher.get("precision", FP32)


@dataclass
class VerifyReport:
    views: int = 0
    digest_ok: int = 0
    teacher_checked: int = 0
    max_prob_diff: float = 0.0
    max_tail_excess: float = float("-inf")  # format 2: nats beyond the log tolerance (<= 0 when all fit)
    draws_checked: int = 0  # format 3: draws checked against a fresh teacher's distribution
    knife_edges: int = 0  # ... of which lay within float error of a class boundary, and were accepted
    precision: str = FP32
    tolerance: float = PROB_TOLERANCE
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.views > 0


def verify_cache(
    reader,
    n_views: int = 64,
    data: str | None = None,
    teacher_weights: str | None = None,
    check_teacher: bool = True,
    device: str = "cpu",
    batch_size: int = 32,
) -> VerifyReport:
    m = reader.manifest
    engine = open_replay(m, data)
    precision = manifest_precision(m)
    report = VerifyReport(precision=precision, tolerance=tolerance(precision))
    runner = _teacher(m, teacher_weights, device, precision) if check_teacher else None
    for block, results in replay_sample(reader, engine, n_views):
        rendered = []
        for r, problems in results:
            report.views += 2
            report.mismatches.extend(problems)
            if r is not None and not problems:
                report.digest_ok += 2
                rendered.append(r)
        if runner is not None and rendered:
            for i in range(0, len(rendered), max(1, batch_size // 2)):
                _check_teacher(runner, rendered[i : i + batch_size // 2], block, engine, report, m)
    return report


def _teacher(m, weights: str | None, device: str, precision: str):
    t = m.teacher
    model, info = create_teacher(t["name"], weights, num_classes=int(t["num_classes"]))
    if info.weights_sha256 != t["weights_sha256"]:
        raise TeacherError(
            f"these teacher weights (sha256 {info.weights_sha256[:16]}...) are not the ones the cache was built "
            f"with ({t['weights_sha256'][:16]}...); pass the original file with --teacher-weights"
        )
    dtype, fp32_head = parse_precision(precision)
    # The teacher as the build ran it (autocast body, fp32 head), so only kernel differences remain.
    forward = TeacherForward(model.to(device).eval(), dtype, fp32_head, torch.device(device).type)
    normalize = Normalize(info.mean, info.std).to(device)

    @torch.inference_mode()
    def probs(images: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(images).to(device))
        return torch.softmax(forward(x), dim=-1).cpu().numpy()

    return probs


def _check_teacher(runner, rendered, block, engine, report: VerifyReport, m) -> None:
    """Exact top-k: within the tolerance of a fresh forward. Format 2's tail (:func:`_tail_excess`): each
    fresh log-prob lies in its code's bin. Format 3's draws (:func:`_check_draws`): each lies under its
    point of the fresh distribution. No class outside the ranked ones may beat the last ranked one."""
    images = np.concatenate([r.images for r in rendered])
    slots = [s for r in rendered for s in r.slots]
    fresh = runner(images)
    topk = m.topk
    tol, log_tol = report.tolerance, log_tolerance(report.precision)
    if m.draws:
        _check_draws(fresh, slots, block, engine, report, m)
    for row, slot in enumerate(slots):
        lp = block.topk_logprob[slot]
        stored_p = np.exp(lp[:topk].astype(np.float64))
        cls = block.topk_class[slot].astype(np.int64)
        p = fresh[row, cls].astype(np.float64)
        diff = float(np.max(np.abs(p[:topk] - stored_p)))
        ceiling, tail = stored_p.min(), None
        if m.tail_classes:
            tail, high = _tail_excess(lp, p, topk, tol, log_tol)
            ceiling = np.exp(high)  # the last stored class is at most this likely, so no other class may be more
            report.max_tail_excess = max(report.max_tail_excess, tail[0])
        others = np.delete(fresh[row], cls[: m.ranked])
        intruder = float(others.max() - ceiling) if others.size else -1.0
        report.teacher_checked += 1
        report.max_prob_diff = max(report.max_prob_diff, diff)
        what = None
        if diff > tol:
            what = (
                f"top-k probabilities differ from a fresh teacher forward by {diff:.2e} "
                f"(tolerance {tol:g}, teacher {report.precision})"
            )
        elif tail is not None and tail[0] > 0:
            what = (
                f"tail class {cls[tail[1]]} (stored rank {tail[1] + 1}): its fresh log-prob lies "
                f"{tail[0] + log_tol:.2f} nats outside the bin of its stored 4-bit code (tolerance {log_tol:g} nats, "
                f"teacher {report.precision})"
            )
        elif intruder > tol:
            what = f"a class outside the stored ones has probability {intruder:.2e} above the last stored one"
        if what is not None:
            sid = int(block.sample_id[slot])
            report.mismatches.append(Mismatch(block.epoch, slot, sid, engine.source.name(sid), what))


def _check_draws(fresh: np.ndarray, slots: list[int], block, engine, report: VerifyReport, m) -> None:
    """Each stored draw against the fresh distribution at its view's offset; a draw within the probability
    tolerance of its class's interval (a knife edge: its point is within float error of a boundary) is
    accepted and counted."""
    rows = np.asarray(slots)
    stored_cls = block.topk_class[rows].astype(np.int64)
    logprobs = np.log(np.maximum(fresh.astype(np.float64), np.finfo(np.float64).tiny))
    u = draw_uniforms(m.seed, block.epoch, rows)
    wrong, knife = check_draws(logprobs, stored_cls[:, : m.topk], stored_cls[:, m.topk :], u, report.tolerance)
    report.draws_checked += int(wrong.size)
    report.knife_edges += int(knife.sum())
    for row in np.flatnonzero(wrong.any(axis=1)):
        j = int(np.flatnonzero(wrong[row])[0])
        slot = int(rows[row])
        sid = int(block.sample_id[slot])
        what = (
            f"draw {j + 1} of {m.draws} (class {int(stored_cls[row, m.topk + j])}) does not lie under its point "
            f"of a fresh teacher's distribution outside the top-{m.topk} ({int(wrong[row].sum())} draw(s) of this "
            f"view differ; tolerance {report.tolerance:g}, teacher {report.precision})"
        )
        report.mismatches.append(Mismatch(block.epoch, slot, sid, engine.source.name(sid), what))


def _tail_excess(lp: np.ndarray, p: np.ndarray, topk: int, tol: float, log_tol: float):
    """((nats by which the worst tail class lies outside its bin beyond ``log_tol``, that class's column),
    the top of the last tail bin). Which code rule the build used (tail.quantize_tail) follows from the
    fresh probabilities; where they leave it within the tolerance, either rule's bin is accepted."""
    fresh_lp = np.log(np.maximum(p, np.finfo(np.float64).tiny))
    margin = float(guard_margin(lp[None, :topk], fresh_lp[None])[0]) + GUARD_SLACK
    rule = -1 if abs(margin) <= tol else int(margin < 0)
    low, high = tail_bounds(lp[None], topk, np.array([rule]))
    out = np.maximum(low[0] - fresh_lp[topk:], fresh_lp[topk:] - high[0]) - log_tol
    worst = int(np.argmax(out))
    return (float(out[worst]), topk + worst), float(high[0, -1] + log_tol)
