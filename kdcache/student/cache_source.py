"""Training views replayed from a cache: the view engine re-renders the stored params; the epoch's
top-k soft labels are loaded into memory once per epoch and indexed by slot."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache.student.batch import TrainBatch, process_slots, steps_per_epoch, train_batch_from_collated
from kdcache.teacher_cache.replay import LIKELY_CAUSE, ReplayMismatch
from kdcache.views import PairBatchDataset, ViewEngine, keep_collated


def cached_epoch(student_epoch: int, epochs_complete: list[int]) -> int:
    """Student epochs beyond the cached ones cycle through them: epoch e uses cached epoch e mod E."""
    return epochs_complete[student_epoch % len(epochs_complete)]


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
            raise ValueError(f"cache {reader.root} has no complete epoch yet; finish the build first")
        self.num_slots = reader.manifest.num_slots
        self._steps = steps_per_epoch(self.num_slots, global_batch)
        if self._steps == 0:
            raise ValueError(
                f"global batch {global_batch} is larger than an epoch ({self.num_slots} views); "
                "use a smaller --batch-size"
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
        slots = (
            np.concatenate(
                [
                    np.asarray(process_slots(t, self.global_batch, self.rank, self.world_size))
                    for t in range(start_step, self._steps)
                ]
            )
            if start_step < self._steps
            else np.zeros(0, np.int64)
        )
        pairs = slots[0::2] // 2
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
