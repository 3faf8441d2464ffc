"""Training views replayed from a cache: the view engine re-renders the stored params; the epoch's
top-k soft labels are loaded into memory once per epoch and indexed by slot."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache.errors import UsageError
from kdcache.student.batch import TrainBatch, process_pairs, steps_per_epoch, train_batch_from_collated
from kdcache.student.teachers import common_epochs
from kdcache.views import PairBatchDataset, ViewEngine, keep_collated
from kdcache.views.plan import cycle_pair_order
from kdcache.views.replay import LIKELY_CAUSE, ReplayMismatch


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
    cached = cached_epoch(student_epoch, epochs_complete)
    order = cycle_pair_order(seed, cached, student_epoch // len(epochs_complete), num_pairs)
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
        teachers: Sequence[tuple[Any, float]] | None = None,
        pin_memory: bool = False,
    ):
        """``teachers``: (layer reader, weight) of each chosen teacher (kdcache.student.teachers); None:
        the cache's own soft labels alone, exactly as a cache without layers. The views always come
        from ``reader``; epochs are those complete in the cache and in every chosen layer."""
        self.reader = reader
        self.teachers = None if teachers is None else tuple((r, float(w)) for r, w in teachers)
        self.engine = engine
        self.to_teacher = np.asarray(to_teacher, dtype=np.int64)
        self.global_batch = global_batch
        self.rank, self.world_size = rank, world_size
        self.workers = workers
        self.with_topk = with_topk
        self.pin_memory = pin_memory
        self.epochs = sorted(reader.epochs_complete)
        if not self.epochs:
            raise UsageError(
                f"cache {reader.root} has no complete epoch yet: finish its build first (run the same "
                "`kdcache build` command again; it resumes)"
            )
        if self.teachers is not None:
            self.epochs = common_epochs(reader, [r for r, _ in self.teachers])
            if not self.epochs:
                raise UsageError(
                    f"the chosen teachers of cache {reader.root} have no complete epoch in common: finish "
                    "adding a teacher first (run its `kdcache build --teacher T --out CACHE` again; it resumes)"
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
        self._labels: list[Any] = []  # the chosen layers' blocks of self._block's epoch

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def _load(self, epoch: int):
        if self._block is None or self._block.epoch != epoch:
            self._block = self.reader.load_epoch(epoch)
            self._labels = []
            if self.teachers is not None and self.with_topk:
                for r, _ in self.teachers:
                    b = self._block if r is self.reader else r.load_epoch(epoch)
                    same = np.array_equal(b.digest, self._block.digest) and np.array_equal(b.params, self._block.params)
                    if not same:
                        raise UsageError(
                            f"layer {r.root} holds other views than cache {self.reader.root} in epoch {epoch}: "
                            "it is not a layer of this cache; remove it and add the teacher again"
                        )
                    self._labels.append(b)
        return self._block

    def _topk(self, block, rows: np.ndarray):
        """(log-probs, classes, layers) of the given slots: the cache's own top-k, or the chosen layers'
        side by side with their (k, weight)."""
        if not self.with_topk:
            return None, None, None
        if self.teachers is None:
            return torch.from_numpy(block.topk_logprob[rows]), torch.from_numpy(block.topk_class[rows]), None
        lps = [b.topk_logprob[rows] for b in self._labels]
        cls = [b.topk_class[rows] for b in self._labels]
        if len(lps) == 1:  # one chosen teacher: exactly that layer's rows, as if it were a cache of its own
            return torch.from_numpy(lps[0]), torch.from_numpy(cls[0]), None
        layers = tuple((int(lp.shape[1]), w) for lp, (_, w) in zip(lps, self.teachers, strict=True))
        # np.concatenate promotes (float16 stays float16; int16 and int32 ids become int32).
        return torch.from_numpy(np.concatenate(lps, 1)), torch.from_numpy(np.concatenate(cls, 1)), layers

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        cached = cached_epoch(epoch, self.epochs)
        block = self._load(cached)
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
        ds = PairBatchDataset(self.engine, cached, steps, records=block.params)
        loader = DataLoader(
            ds,
            batch_size=None,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=keep_collated,
            persistent_workers=False,
            pin_memory=self.pin_memory,
        )
        m = self.engine.n_ops, self.engine.augment.image_size
        for collated in loader:
            rows = np.asarray(collated["slots"])
            bad = np.flatnonzero(collated["digests"] != block.digest[rows])
            if bad.size:
                s = int(rows[bad[0]])
                raise ReplayMismatch(
                    f"view epoch {cached} slot {s} (sample {int(block.sample_id[s])}, "
                    f"{self.engine.source.name(int(block.sample_id[s]))}) re-rendered to a different digest. "
                    + LIKELY_CAUSE
                )
            collated["labels"] = self.to_teacher[np.asarray(collated["labels"])]
            lp, cls, layers = self._topk(block, rows)
            yield train_batch_from_collated(collated, m[0], m[1], lp, cls, layers)
