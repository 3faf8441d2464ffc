"""Wall time spent in teacher forwards, measured inside `kdcache build` and `kdcache train --kd online`.

Neither code path exposes the time its teacher takes to a caller (build prints a share in its summary;
online training does not measure it), so for the length of a ``with teacher_clock() as clock:`` block
the two teacher entry points, :meth:`TeacherRunner.logits` and :meth:`OnlineTeacher.__call__`, are
wrapped with a timer. The wrappers call the originals unchanged and are removed on exit. Both run in
the main process and synchronously on the CPU, so perf_counter around them is the forward's time
(on CUDA the clock synchronises the device first).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class TeacherClock:
    seconds: float = 0.0
    calls: int = 0
    views: int = 0


def _timed(fn, clock: TeacherClock):
    @functools.wraps(fn)
    def wrapper(self, images, *args, **kwargs):
        sync = images.is_cuda and torch.cuda.is_available()
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(self, images, *args, **kwargs)
        if sync:
            torch.cuda.synchronize()
        clock.seconds += time.perf_counter() - t0
        clock.calls += 1
        clock.views += int(images.shape[0])
        return out

    return wrapper


@contextlib.contextmanager
def teacher_clock() -> Iterator[TeacherClock]:
    from kdcache.student.online_teacher import OnlineTeacher
    from kdcache.teacher_cache.build import TeacherRunner

    clock = TeacherClock()
    saved = [(OnlineTeacher, "__call__"), (TeacherRunner, "logits")]
    originals = [cls.__dict__[name] for cls, name in saved]
    try:
        for (cls, name), fn in zip(saved, originals, strict=True):
            setattr(cls, name, _timed(fn, clock))
        yield clock
    finally:
        for (cls, name), fn in zip(saved, originals, strict=True):
            setattr(cls, name, fn)
