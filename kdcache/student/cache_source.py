"""Training views replayed from a cache: the view engine re-renders the stored params; the epoch's
top-k soft labels are loaded into memory once per epoch and indexed by slot."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache.errors import UsageError
from kdcache.student.batch import TrainBatch, process_pairs, steps_per_epoch, train_batch_from_collated
from kdcache.teacher_cache.replay import LIKELY_CAUSE, ReplayMismatch
from kdcache.views import PairBatchDataset, ViewEngine, keep_collated
from kdcache.views.plan import cycle_pair_order


def cached_epoch(student_epoch: int, epochs_complete: list[int]) -> int:
    """Student epochs beyond the cached ones cycle through them: epoch e uses cached epoch e mod E."""
    return epochs_complete[student_epoch % len(epochs_complete)]


def epoch_pairs(
    seed: int,
    student_epoch: int,
    epochs_complete: list[int],
    num_pairs: int,
    steps: range,
    global_batch: int,
    rank: int = 0,
    world_size: int = 1,
) -> np.ndarray:
    """The cached pairs process ``rank`` trains on in ``steps`` of a student epoch, in order.

    Each pass through the cache (cycle) replays its epochs in a fresh seeded pair order (cycle 0: the
    plan's order); within a step rank r takes the pairs j = r (mod world size).
    """
    ce = cached_epoch(student_epoch, epochs_complete)
    order = cycle_pair_order(seed, ce, student_epoch // len(epochs_complete), num_pairs)
    positions = [process_pairs(t, global_batch, rank, world_size) for t in steps]
    return order[np.concatenate(positions)] if positions else np.zeros(0, np.int64)


class CacheBatchSource:
    """A :class:`~kdcache.student.batch.BatchSource` over a cache.

    with_topk=True (mode cached) attaches the stored teacher top-k; False (online, none) gives the
    same views without it. Every rendered view's digest is compared with the stored one (the
    workers compute it anyway), so a silent change in rendering can never be trained on.
    """

    def __init__(
        self,
        reader,
        engine: ViewEngine,
        to_teacher: np.ndarray,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        with_topk: bool = True,
    ):
        self.reader = reader
        self.engine = engine
        self.to_teacher = np.asarray(to_teacher, dtype=np.int64)
        self.global_batch = global_batch
        self.rank, self.world_size = rank, world_size
        self.workers = workers
        self.with_topk = with_topk
        self.epochs = sorted(reader.epochs_complete)
        if not self.epochs:
            raise UsageError(
                f"cache {reader.root} has no complete epoch yet: finish its build first (run the same "
                "`kdcache build` command again; it resumes)"
            )
        self.num_slots = reader.manifest.num_slots
        self._steps = steps_per_epoch(self.num_slots, global_batch)
        if self._steps == 0:
            raise UsageError(
                f"--batch-size {global_batch} (the global batch, over all processes) is larger than an epoch of "
                f"this cache ({self.num_slots} views): pass --batch-size {self.num_slots} or "
                "less (even), or build the cache from more images"
            )
        self._block = None

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def _load(self, epoch: int):
        if self._block is None or self._block.epoch != epoch:
            self._block = self.reader.load_epoch(epoch)
        return self._block

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        ce = cached_epoch(epoch, self.epochs)
        block = self._load(ce)
        per = self.global_batch // self.world_size
        pairs = epoch_pairs(
            self.reader.manifest.seed,
            epoch,
            self.epochs,
            self.num_slots // 2,
            range(start_step, self._steps),
            self.global_batch,
            self.rank,
            self.world_size,
        )
        # One item per step: the step's pairs rendered together, each source image decoded once.
        steps = np.split(pairs, len(pairs) // (per // 2)) if len(pairs) else []
        ds = PairBatchDataset(self.engine, ce, steps, records=block.params)
        loader = DataLoader(
            ds,
            batch_size=None,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=keep_collated,
            persistent_workers=False,
        )
        m = self.engine.n_ops, self.engine.augment.image_size
        for collated in loader:
            rows = np.asarray(collated["slots"])
            bad = np.flatnonzero(collated["digests"] != block.digest[rows])
            if bad.size:
                s = int(rows[bad[0]])
                raise ReplayMismatch(
                    f"view epoch {ce} slot {s} (sample {int(block.sample_id[s])}, "
                    f"{self.engine.source.name(int(block.sample_id[s]))}) re-rendered to a different digest. "
                    + LIKELY_CAUSE
                )
            collated["labels"] = self.to_teacher[np.asarray(collated["labels"])]
            lp = torch.from_numpy(block.topk_logprob[rows]) if self.with_topk else None
            cls = torch.from_numpy(block.topk_class[rows]) if self.with_topk else None
            yield train_batch_from_collated(collated, m[0], m[1], lp, cls)
