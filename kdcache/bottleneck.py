"""Which side of a loader → model loop is the bottleneck: the views or the model.

The consumer (the teacher in a build, the student in training) times two things in its own process:
how long it was blocked in the DataLoader's next() (it waited for views) and how long its own work
took (forward + device sync; a training step). The loader side cannot be timed directly (its workers
run ahead into a prefetch queue), so "the loader waited for the model" is read as the model's share:
when the queue is full the workers are idle and the consumer never blocks. Imports nothing of kdcache.
"""

from __future__ import annotations

from dataclasses import dataclass

VIEWS = "views"
MODEL = "model"


@dataclass(frozen=True)
class FeedTimes:
    """Wall seconds of a loop, the part of them blocked on the loader, the part in the model."""

    seconds: float
    wait_seconds: float
    work_seconds: float

    @property
    def wait_share(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def work_share(self) -> float:
        return self.work_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def bottleneck(self) -> str:
        """VIEWS when the model waited for views longer than it worked, else MODEL."""
        return VIEWS if self.wait_seconds > self.work_seconds else MODEL


def views_remedy(workers: int) -> str:
    return f"views are the bottleneck: raise --workers (now {workers}) or use more CPU cores"


def _on_cuda(device: str) -> bool:
    return device.startswith("cuda")


def teacher_remedy(device: str) -> str:
    """What speeds up the teacher of a build on ``device``. --amp, --channels-last and --compile pay on a
    GPU's tensor cores; on a CPU autocast is often slower (no bf16/fp16 units) and the teacher already
    shares the cores with the rendering workers, so the remedies there are hardware."""
    if _on_cuda(device):
        return (
            "the teacher is the bottleneck: a faster teacher path (--amp, --channels-last, --compile, a bigger "
            "--batch-size)"
        )
    return (
        f"the teacher is the bottleneck: on {device}, run it on a GPU (--device cuda) or on more CPU cores; a "
        "bigger --batch-size may help a little"
    )


def student_remedy(device: str) -> str:
    """What speeds up the student step on ``device`` (see :func:`teacher_remedy` for why CPU differs)."""
    if _on_cuda(device):
        return "the student step is the bottleneck: a faster student path (--amp, --channels-last, --compile)"
    return f"the student step is the bottleneck: on {device}, train on a GPU (--device cuda) or on more CPU cores"


# The CUDA remedies, for callers that do not pass the device (prefer teacher_remedy / student_remedy).
TEACHER_REMEDY = teacher_remedy("cuda")
STUDENT_REMEDY = student_remedy("cuda")


def feed_report(times: FeedTimes, workers: int, model: str, model_remedy: str) -> str:
    """One line: both shares and the remedy, e.g. ``waiting for views 71%, teacher 25% of the time:
    views are the bottleneck: raise --workers (now 2) or use more CPU cores``."""
    remedy = views_remedy(workers) if times.bottleneck == VIEWS else model_remedy
    shares = f"waiting for views {100 * times.wait_share:.0f}%, {model} {100 * times.work_share:.0f}% of the time"
    return f"{shares}: {remedy}"
