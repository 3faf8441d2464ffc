"""The teacher pass: render views, run the teacher, write top-k per work unit.

Data path: DataLoader workers render uint8 views (pure function of (epoch, pair)); the main process
moves them to the device, normalises with the teacher's own mean/std, runs the teacher in inference
mode, takes log-softmax + top-k on the device, and hands each finished work unit to a writer
thread, so disk I/O overlaps the next forward passes.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kdcache.distributed import World
from kdcache.teacher_cache.build.assembler import UnitAssembler
from kdcache.teacher_cache.build.config import BuildConfig
from kdcache.teacher_cache.build.runner import TeacherRunner
from kdcache.teacher_cache.build.schedule import Unit, unit_batches
from kdcache.views import RenderedPair, ViewEngine, collate_pairs

# After this many batches the main rank prints its measured rate and the time the rest will take
# (the first batches include worker start-up, so the estimate errs long rather than short).
ESTIMATE_AFTER_BATCHES = 20


def eta_line(views_done: int, seconds: float, views_left: int) -> str:
    rate = views_done / seconds if seconds > 0 else 0.0
    eta = f"about {views_left / rate / 3600:.2f} h" if rate else "unknown time"
    return f"teacher: {rate:.1f} views/s, {eta} for the remaining {views_left:,} views of this rank"


class BuildItems(Dataset):
    """Item i renders pair items[i] = (epoch, pair)."""

    def __init__(self, engine: ViewEngine, items: np.ndarray):
        self.engine = engine
        self.items = items

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def __getitem__(self, i: int) -> RenderedPair:
        epoch, pair = (int(x) for x in self.items[i])
        return self.engine.render_pair(epoch, pair)


@dataclass(frozen=True)
class BuildStats:
    views: int
    units: int
    seconds: float
    teacher_seconds: float

    @property
    def views_per_s(self) -> float:
        return self.views / self.seconds if self.seconds else 0.0

    @property
    def teacher_share(self) -> float:
        return self.teacher_seconds / self.seconds if self.seconds else 0.0


def run_units(
    engine: ViewEngine,
    runner: TeacherRunner,
    units: list[Unit],
    write_unit,  # (epoch, unit_index, arrays) -> None; called on the writer thread
    class_dtype: np.dtype,
    cfg: BuildConfig,
    world: World,
) -> BuildStats:
    """Render, run the teacher and write every unit in ``units`` (this rank's pending ones)."""
    t0 = time.perf_counter()
    if not units:
        return BuildStats(0, 0, 0.0, 0.0)
    items, batches = unit_batches(units, cfg.batch_size)
    unit_of_item = np.repeat(np.arange(len(units)), [u.size // 2 for u in units])
    loader = DataLoader(
        BuildItems(engine, items),
        batch_sampler=batches,
        num_workers=cfg.workers,
        collate_fn=collate_pairs,
        pin_memory=cfg.device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers else None,
    )
    assembler = UnitAssembler(cfg.topk, engine.record_width, class_dtype)
    total = int(items.shape[0]) * 2
    bar = tqdm(
        total=total,
        unit="view",
        desc=f"build[rank {world.rank}]" if world.size > 1 else "build",
        disable=not cfg.progress,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    teacher_s = 0.0
    pending: list[Future] = []
    done_units = 0
    views_done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdcache-writer") as pool:
        for n_batch, (batch_idx, batch) in enumerate(zip(batches, loader, strict=True), start=1):
            unit = units[int(unit_of_item[batch_idx[0]])]
            ts = time.perf_counter()
            lp, cls = runner.topk(batch["images"])
            teacher_s += time.perf_counter() - ts
            arrays = assembler.add(unit, batch, lp, cls.astype(class_dtype))
            if arrays is not None:
                pending.append(pool.submit(write_unit, unit.epoch, unit.index, arrays))
                done_units += 1
                # Bound memory: at most two units waiting on the writer; surface write errors early.
                while len(pending) > 2:
                    pending.pop(0).result()
            bar.update(len(batch["slots"]))
            views_done += len(batch["slots"])
            if n_batch == ESTIMATE_AFTER_BATCHES and world.is_main and views_done < total:
                line = eta_line(views_done, time.perf_counter() - t0, total - views_done)
                tqdm.write(line, file=sys.stderr)
            bar.set_postfix(units=f"{done_units}/{len(units)}", refresh=False)
        for f in pending:
            f.result()
    bar.close()
    return BuildStats(total, len(units), time.perf_counter() - t0, teacher_s)
