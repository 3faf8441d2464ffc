"""The teacher pass: render views, run the teacher, write top-k per work unit.

Data path: DataLoader workers render uint8 views (pure function of (epoch, pair)); the main process
moves them to the device, normalises with the teacher's own mean/std, runs the teacher in inference
mode, takes log-softmax + top-k on the device, and hands each finished work unit to a writer
thread, so disk I/O overlaps the next forward passes.
"""

from __future__ import annotations

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
from kdcache.teacher_cache.store.fidelity import FidelityStats
from kdcache.views import RenderedPair, ViewEngine, collate_pairs


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
    write_stats=None,  # (epoch, unit_index, FidelityStats) -> None, after the unit's write; None: not measured
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
    fidelity: dict[tuple[int, int], FidelityStats] = {}
    pending: list[Future] = []
    done_units = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdcache-writer") as pool:
        for batch_idx, batch in zip(batches, loader, strict=True):
            unit = units[int(unit_of_item[batch_idx[0]])]
            ts = time.perf_counter()
            if write_stats is None:
                lp, cls = runner.topk(batch["images"])
            else:
                lp, cls, outside, kl = runner.topk_and_fidelity(batch["images"])
                # batches never cross a unit boundary, so the unit's figures are complete with its rows
                fidelity.setdefault((unit.epoch, unit.index), FidelityStats()).add(outside, kl)
            teacher_s += time.perf_counter() - ts
            arrays = assembler.add(unit, batch, lp, cls.astype(class_dtype))
            if arrays is not None:
                pending.append(pool.submit(write_unit, unit.epoch, unit.index, arrays))
                if write_stats is not None:  # after the commit: figures never describe an uncommitted unit
                    unit_stats = fidelity.pop((unit.epoch, unit.index))
                    pending.append(pool.submit(write_stats, unit.epoch, unit.index, unit_stats))
                done_units += 1
                # Bound memory: at most two units waiting on the writer; surface write errors early.
                while len(pending) > (2 if write_stats is None else 4):
                    pending.pop(0).result()
            bar.update(len(batch["slots"]))
            bar.set_postfix(units=f"{done_units}/{len(units)}", refresh=False)
        for f in pending:
            f.result()
    bar.close()
    return BuildStats(total, len(units), time.perf_counter() - t0, teacher_s)
