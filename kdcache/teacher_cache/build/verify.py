"""``kdcache verify``: re-render sampled views, compare digests, re-run the teacher, compare top-k."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kdcache.models.normalize import Normalize
from kdcache.models.teacher import TeacherError, create_teacher
from kdcache.teacher_cache.replay import Mismatch, open_replay, replay_sample

# fp16 log-probs are exact to ~1e-3 relative, so stored probabilities are within ~1e-4 absolute of
# the teacher's; 1e-3 leaves room for float32 differences between the build's and this run's batch.
PROB_TOLERANCE = 1e-3


@dataclass
class VerifyReport:
    views: int = 0
    digest_ok: int = 0
    teacher_checked: int = 0
    max_prob_diff: float = 0.0
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
    report = VerifyReport()
    runner = _teacher(m, teacher_weights, device) if check_teacher else None
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
                _check_teacher(runner, rendered[i : i + batch_size // 2], block, engine, report)
    return report


def _teacher(m, weights: str | None, device: str):
    t = m.teacher
    model, info = create_teacher(t["name"], weights, num_classes=int(t["num_classes"]))
    if info.weights_sha256 != t["weights_sha256"]:
        raise TeacherError(
            f"these teacher weights (sha256 {info.weights_sha256[:16]}...) are not the ones the cache was built "
            f"with ({t['weights_sha256'][:16]}...); pass the original file with --teacher-weights"
        )
    model = model.to(device).eval()
    normalize = Normalize(info.mean, info.std).to(device)

    @torch.inference_mode()
    def probs(images: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(images).to(device))
        return torch.softmax(model(x).float(), dim=-1).cpu().numpy()

    return probs


def _check_teacher(runner, rendered, block, engine, report: VerifyReport) -> None:
    images = np.concatenate([r.images for r in rendered])
    slots = [s for r in rendered for s in r.slots]
    fresh = runner(images)
    for row, slot in enumerate(slots):
        stored_p = np.exp(block.topk_logprob[slot].astype(np.float64))
        cls = block.topk_class[slot].astype(np.int64)
        diff = float(np.max(np.abs(fresh[row, cls] - stored_p)))
        others = np.delete(fresh[row], cls)
        # A class outside the stored top-k must not beat the smallest stored one (beyond tolerance).
        intruder = float(others.max() - stored_p.min()) if others.size else -1.0
        report.teacher_checked += 1
        report.max_prob_diff = max(report.max_prob_diff, diff)
        if diff > PROB_TOLERANCE or intruder > PROB_TOLERANCE:
            sid = int(block.sample_id[slot])
            what = (
                (
                    f"top-k probabilities differ from a fresh teacher forward by {diff:.2e} "
                    f"(tolerance {PROB_TOLERANCE:g})"
                )
                if diff > PROB_TOLERANCE
                else (f"a class outside the stored top-k has probability {intruder:.2e} above the stored minimum")
            )
            report.mismatches.append(Mismatch(block.epoch, slot, sid, engine.source.name(sid), what))
