"""The teacher pass: render views, run the teacher, write top-k per work unit.

Data path: DataLoader workers render whole batches of uint8 views (pure function of (epoch, pairs);
each source image decoded once per batch, see ViewEngine.render_batch); the main process
moves them to the device, normalises with the teacher's own mean/std, runs the teacher in inference
mode, takes log-softmax + top-k on the device, and hands each finished work unit to a writer
thread, so disk I/O overlaps the next forward passes. The loop times how long the teacher waited for
views and how long it worked, and says which side is the bottleneck (kdcache.bottleneck).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kdcache.bottleneck import FeedTimes, feed_report, teacher_remedy
from kdcache.distributed import World
from kdcache.teacher_cache.store import EpochBlock, open_cache
from kdcache.teacher_cache.store.fidelity import DRAW_STATS, STATS, FidelityStats
from kdcache.teacher_cache.teacher_pass.assembler import UnitAssembler
from kdcache.teacher_cache.teacher_pass.config import BuildConfig
from kdcache.teacher_cache.teacher_pass.runner import TeacherRunner
from kdcache.teacher_cache.teacher_pass.schedule import BatchSchedule, Unit
from kdcache.views import ViewEngine, keep_collated
from kdcache.views.replay import ReplayMismatch

REPORT_EVERY = 10  # batches between updates of the bottleneck shares on the progress bar
LOG_EVERY = 200  # batches between bottleneck log lines when there is no progress bar


def human_duration(h: float) -> str:
    """Hours as a person reads them: 40 s, 12 min, 3.5 h, 2.1 days."""
    s = h * 3600
    if s < 1:
        return "under 1 s"
    if s < 120:
        return f"{s:,.0f} s"
    if s < 7200:
        return f"{s / 60:,.0f} min"
    if h < 72:
        return f"{h:,.1f} h"
    return f"{h / 24:,.1f} days"


def eta_line(views_done: int, seconds: float, views_left: int) -> str:
    rate = views_done / seconds if seconds > 0 else 0.0
    eta = f"about {human_duration(views_left / rate / 3600)}" if rate else "unknown time"
    return f"teacher: {rate:.1f} views/s, {eta} for the remaining {views_left:,} views of this rank"


def estimate_due(n: int) -> bool:
    """Whether batch ``n`` (1-based) prints a time estimate when there is no progress bar: the first
    batch (so even a short build shows one), then 2, 4, 8, ... while the rate settles, then every
    LOG_EVERY batches."""
    return n >= 1 and ((n & (n - 1) == 0 and n < LOG_EVERY) or n % LOG_EVERY == 0)


class Eta:
    """The rate and time left, from the first batch on. The first estimate includes the workers'
    start-up and errs long; from the second batch on the rate is measured from the end of the first."""

    def __init__(self, start: float):
        self.start = start
        self.first: tuple[float, int] | None = None  # (when, views) at the end of the first batch

    def line(self, now: float, views_done: int, views_left: int) -> str:
        if self.first is None:
            self.first = (now, views_done)
        at, views = self.first
        if views_done > views and now > at:
            return eta_line(views_done - views, now - at, views_left)
        return eta_line(views_done, now - self.start, views_left)

    def postfix(self, line: str) -> str:
        """The estimate's short form for the progress bar: 'about 3 min'."""
        return line.split(", ", 1)[1].split(" for ", 1)[0] if ", " in line else line


class StoredViews:
    """The views of an existing cache (its first layer), epoch by epoch: what a build that adds a
    teacher replays instead of sampling. Opened lazily, so it travels to DataLoader workers as a path;
    each process holds one epoch block at a time (81 B/view)."""

    def __init__(self, cache: str):
        self.cache = cache
        self._block: EpochBlock | None = None

    def block(self, epoch: int) -> EpochBlock:
        if self._block is None or self._block.epoch != epoch:
            self._block = None  # free the previous epoch before loading the next
            self._block = open_cache(self.cache, allow_unfinished=True).load_epoch(epoch)
        return self._block

    def __getstate__(self) -> dict[str, object]:
        return {"cache": self.cache, "_block": None}


class BuildBatches(Dataset):
    """Item i is batch i of the schedule, rendered and collated: ``batches[i]`` = (epoch, pairs).

    A batch never crosses a unit, so never an epoch; render_batch equals collate_pairs over the
    per-pair renders view for view, so the bytes written do not depend on this grouping.

    With ``stored`` (adding a teacher to existing views) nothing is sampled: every view is re-rendered
    from its stored params and its digest checked against the stored one before the teacher sees it;
    the batch then carries the stored view arrays, so the layer's view arrays are the cache's."""

    def __init__(
        self, engine: ViewEngine, batches: Sequence[tuple[int, np.ndarray]], stored: StoredViews | None = None
    ):
        self.engine = engine
        self.batches = batches
        self.stored = stored

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, object]:
        epoch, pairs = self.batches[i]
        if self.stored is None:
            return self.engine.render_batch(epoch, pairs)
        block = self.stored.block(epoch)
        slots = np.stack([2 * np.asarray(pairs), 2 * np.asarray(pairs) + 1], axis=1).ravel()
        stored = block.params[slots]
        batch = self.engine.render_batch(epoch, pairs, records=stored)
        check_replayed(self.stored.cache, epoch, batch, block)
        batch["records"] = stored  # the layer's view arrays are the cache's, byte for byte
        return batch


def check_replayed(cache: str, epoch: int, batch: dict, block: EpochBlock) -> None:
    """Raise ReplayMismatch naming the first view whose re-render differs from the stored one."""
    slots = np.asarray(batch["slots"])
    bad_ids = np.flatnonzero(np.asarray(batch["sample_ids"]) != block.sample_id[slots])
    bad = np.flatnonzero(np.asarray(batch["digests"]) != block.digest[slots])
    for what, rows in (("sample id", bad_ids), ("digest", bad)):
        if rows.size:
            r = int(rows[0])
            slot, sample = int(slots[r]), int(block.sample_id[slots[r]])
            raise ReplayMismatch(
                f"view epoch {epoch} slot {slot} (sample {sample}) of {cache} re-renders with a different "
                f"{what} than stored ({rows.size} of {len(slots)} views in this batch differ): the images or the "
                f"libraries changed since the cache was built, so its views cannot take another teacher. "
                f"Nothing was committed for this unit; run `kdcache verify {cache}`, restore the images, or build "
                f"a new cache"
            )


@dataclass(frozen=True)
class BuildStats:
    views: int
    units: int
    seconds: float
    teacher_seconds: float  # in the forward + device sync (runner.topk)
    wait_seconds: float = 0.0  # blocked in the DataLoader's next(): the teacher waited for views
    workers: int = 0
    device: str = "cpu"  # where the teacher ran: the remedy in the bottleneck report depends on it

    @property
    def views_per_s(self) -> float:
        return self.views / self.seconds if self.seconds else 0.0

    @property
    def teacher_share(self) -> float:
        return self.teacher_seconds / self.seconds if self.seconds else 0.0

    @property
    def feed(self) -> FeedTimes:
        return FeedTimes(self.seconds, self.wait_seconds, self.teacher_seconds)

    def bottleneck_report(self) -> str:
        return feed_report(self.feed, self.workers, "teacher", teacher_remedy(self.device))


def run_units(
    engine: ViewEngine,
    runner: TeacherRunner,
    units: list[Unit],
    write_unit,  # (epoch, unit_index, arrays) -> None; called on the writer thread
    class_dtype: np.dtype,
    cfg: BuildConfig,
    world: World,
    write_stats=None,  # (epoch, unit_index, FidelityStats) -> None, after the unit's write; None: not measured
    stored: StoredViews | None = None,  # replay these views instead of sampling (adding a teacher)
) -> BuildStats:
    """Render, run the teacher and write every unit in ``units`` (this rank's pending ones).

    The batches are computed as the DataLoader asks for them (schedule.BatchSchedule), so the schedule
    costs a few integers per unit rather than a row per view, whatever --epochs is."""
    t0 = time.perf_counter()
    if not units:
        return BuildStats(0, 0, 0.0, 0.0, workers=cfg.workers, device=cfg.device)
    schedule = BatchSchedule(units, cfg.batch_size)
    loader = DataLoader(
        BuildBatches(engine, schedule, stored),
        batch_size=None,
        num_workers=cfg.workers,
        collate_fn=keep_collated,
        # Pins the dict's tensors (the images) so runner.preprocess copies them with non_blocking=True.
        pin_memory=cfg.device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers else None,
    )
    assembler = UnitAssembler(cfg.topk + cfg.tail() + cfg.draws_per_view(), engine.record_width, class_dtype)
    total = schedule.views
    bar = tqdm(
        total=total,
        unit="view",
        desc=f"build[rank {world.rank}]" if world.size > 1 else "build",
        disable=not cfg.progress,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    teacher_s = wait_s = 0.0
    fidelity: dict[tuple[int, int], FidelityStats] = {}
    pending: list[Future] = []
    done_units = 0
    views_done = 0
    shares: dict[str, str] = {}
    eta = Eta(t0)
    remedy = teacher_remedy(cfg.device)
    batches_iter = iter(loader)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdcache-writer") as pool:
        for n in range(1, len(schedule) + 1):
            tw = time.perf_counter()
            batch = next(batches_iter)  # blocks while the workers have no batch ready
            ts = time.perf_counter()
            wait_s += ts - tw
            unit = units[schedule.unit_position(n - 1)]
            # .cpu() of the results syncs the device, so the clock holds the forward
            if write_stats is None:
                lp, cls = runner.topk(batch["images"], unit.epoch, batch["slots"])
            else:
                lp, cls, figures, diff = runner.topk_and_fidelity(batch["images"], unit.epoch, batch["slots"])
                # batches never cross a unit boundary, so the unit's figures are complete with its rows
                names = DRAW_STATS if runner.draws else STATS
                fidelity.setdefault((unit.epoch, unit.index), FidelityStats(names=names)).add(*figures, diff=diff)
            teacher_s += time.perf_counter() - ts
            arrays = assembler.add(unit, batch, lp, cls.astype(class_dtype))
            if arrays is not None:
                pending.append(pool.submit(write_unit, unit.epoch, unit.index, arrays))
                if write_stats is not None:  # after the commit: figures never describe an uncommitted unit
                    unit_stats = fidelity.pop((unit.epoch, unit.index))
                    unit_stats.close_unit()
                    pending.append(pool.submit(write_stats, unit.epoch, unit.index, unit_stats))
                done_units += 1
                # Bound memory: at most two units waiting on the writer; surface write errors early.
                while len(pending) > (2 if write_stats is None else 4):
                    pending.pop(0).result()
            bar.update(len(batch["slots"]))
            views_done += len(batch["slots"])
            now = time.perf_counter()
            last = n == len(schedule)
            # The time left, from the first batch on (a short build shows one too), refined as it goes:
            # on the bar's postfix, or without a bar as a log line at batches 1, 2, 4, ... then every LOG_EVERY.
            estimate = ""
            if world.is_main and not last and (cfg.progress or estimate_due(n)):
                estimate = eta.line(now, views_done, total - views_done)
                if not cfg.progress:
                    print(f"build: {n}/{len(schedule)} batches; {estimate}", file=sys.stderr, flush=True)
                else:
                    shares["eta"] = eta.postfix(estimate)
            if n % REPORT_EVERY == 0 or last:
                feed = FeedTimes(now - t0, wait_s, teacher_s)
                shares.update({"wait views": f"{feed.wait_share:.0%}", "teacher": f"{feed.work_share:.0%}"})
                if not cfg.progress and n % LOG_EVERY == 0:  # no bar to read: a log line now and then
                    report = feed_report(feed, cfg.workers, "teacher", remedy)
                    print(f"build: {n}/{len(schedule)} batches; {report}", file=sys.stderr, flush=True)
            if last:
                shares.pop("eta", None)
            bar.set_postfix({"units": f"{done_units}/{len(units)}", **shares}, refresh=False)
        for f in pending:
            f.result()
    bar.close()
    return BuildStats(total, len(units), time.perf_counter() - t0, teacher_s, wait_s, cfg.workers, cfg.device)
