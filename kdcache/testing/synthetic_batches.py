"""A deterministic, in-memory batch source for tests and smoke runs (no images, no cache)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from kdcache.student.batch import TrainBatch, pair_slots, process_pairs, steps_per_epoch

_TAG = 0x5EED_BA7C  # separates these streams from every other use of the same seed


class SyntheticBatchSource:
    """Views of class-coloured noise images, mixed in pairs with a random lambda.

    Every pair is generated from a counter-based generator keyed by (seed, epoch, pair), so the data
    of a step is a pure function of (epoch, step, rank, world size), whatever was generated before.
    With ``topk`` set, each view also carries a fake teacher's top-k log-probs (fp16): a softmax
    that leans towards the view's two labels in proportion to lambda.
    """

    def __init__(
        self,
        num_slots: int,
        global_batch: int,
        image_size: int = 32,
        num_classes: int = 10,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        topk: int | None = None,
    ):
        if num_slots < global_batch:
            raise ValueError(f"num_slots ({num_slots}) must hold at least one global batch ({global_batch})")
        if topk is not None and not 1 <= topk <= num_classes:
            raise ValueError(f"topk must be in 1..{num_classes}, got {topk}")
        self.num_slots = num_slots
        self.global_batch = global_batch
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.topk = topk
        g = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, _TAG])))
        self._palette = g.integers(0, 256, size=(num_classes, 3)).astype(np.float32)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_slots, self.global_batch)

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        for step in range(start_step, self.steps_per_epoch):
            yield self.batch(epoch, step)

    def batch(self, epoch: int, step: int) -> TrainBatch:
        mine = process_pairs(step, self.global_batch, self.rank, self.world_size)
        pairs = [self._pair(epoch, int(p)) for p in mine]
        images, labels, lam, logits = (np.concatenate(parts) for parts in zip(*pairs, strict=True))
        y_a = torch.from_numpy(labels)
        kw = {}
        if self.topk is not None:
            logp = torch.log_softmax(torch.from_numpy(logits), dim=1)
            top = logp.topk(self.topk, dim=1)
            kw = {"topk_logprob": top.values.half(), "topk_class": top.indices.to(torch.int16)}
        return TrainBatch(
            images=torch.from_numpy(images),
            y_a=y_a,
            y_b=y_a.view(-1, 2).flip(1).reshape(-1),
            lam=torch.from_numpy(lam),
            slots=torch.from_numpy(pair_slots(mine)),
            **kw,
        )

    def _pair(self, epoch: int, pair: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        g = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, _TAG, epoch, pair])))
        s, c = self.image_size, self.num_classes
        labels = g.integers(0, c, size=2)
        lam = np.float32(g.uniform(0.0, 1.0))
        noise = g.normal(0.0, 40.0, size=(2, s, s, 3)).astype(np.float32)
        base = self._palette[labels][:, None, None, :] + noise  # (2, S, S, 3)
        mixed = np.stack([lam * base[0] + (1 - lam) * base[1], lam * base[1] + (1 - lam) * base[0]])
        images = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        logits = g.normal(0.0, 1.0, size=(2, c)).astype(np.float32)
        logits[0, labels[0]] += 4 * lam
        logits[0, labels[1]] += 4 * (1 - lam)
        logits[1, labels[1]] += 4 * lam
        logits[1, labels[0]] += 4 * (1 - lam)
        return images, labels.astype(np.int64), np.array([lam, lam], dtype=np.float32), logits
