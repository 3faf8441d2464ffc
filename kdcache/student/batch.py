"""What the trainer consumes: one process's share of one optimiser step, in slot order."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from kdcache.views import params as P

_CLASS_DTYPES = (torch.int16, torch.int32, torch.int64)


class BatchError(ValueError):
    """A batch does not have the shape, dtype or pair structure the trainer needs."""


@dataclass(frozen=True)
class TrainBatch:
    """One process's views for one optimiser step.

    Views come in whole mixing pairs: rows 2i and 2i+1 are mix(A, B, lam) and mix(B, A, lam), so
    ``y_b[2i] == y_a[2i+1]`` and ``lam[2i] == lam[2i+1]``. ``lam`` is the share of each view's *base*
    image (Mixup weight, or the CutMix area not covered by the box); 1.0 for an unmixed view.
    """

    images: torch.Tensor  # uint8 (B, H, W, 3), already mixed: exactly what the teacher saw
    y_a: torch.Tensor  # int64 (B,): label of the base image
    y_b: torch.Tensor  # int64 (B,): label of the partner image
    lam: torch.Tensor  # float32 (B,)
    topk_logprob: torch.Tensor | None = None  # float16 (B, k): teacher log-probs at T=1 (cached mode)
    topk_class: torch.Tensor | None = None  # int16 / int32 / int64 (B, k): their class ids
    slots: torch.Tensor | None = None  # int64 (B,): epoch slots, for diagnostics
    # Several teachers (cache layers): the top-k columns are the layers' rows side by side, and this gives
    # each layer's (k, weight) in column order; the target is the weighted mean of their distributions.
    # None: one teacher, all k columns (as before layers existed).
    topk_layers: tuple[tuple[int, float], ...] | None = None

    def __post_init__(self) -> None:
        im = self.images
        if im.dtype != torch.uint8 or im.dim() != 4 or im.shape[-1] != 3:
            raise BatchError(f"images must be uint8 (B, H, W, 3), got {im.dtype} {tuple(im.shape)}")
        b = im.shape[0]
        if b == 0 or b % 2:
            raise BatchError(f"a batch holds whole mixing pairs: size must be even and > 0, got {b}")
        for name, dtype in (("y_a", torch.int64), ("y_b", torch.int64), ("lam", torch.float32)):
            t = getattr(self, name)
            if t.dtype != dtype or tuple(t.shape) != (b,):
                raise BatchError(f"{name} must be {dtype} ({b},), got {t.dtype} {tuple(t.shape)}")
        if (self.topk_logprob is None) != (self.topk_class is None):
            raise BatchError("topk_logprob and topk_class come together")
        if self.topk_logprob is not None:
            lp, cl = self.topk_logprob, self.topk_class
            assert cl is not None
            if lp.dim() != 2 or lp.shape[0] != b or lp.shape != cl.shape:
                raise BatchError(f"top-k arrays must both be (B={b}, k), got {tuple(lp.shape)} and {tuple(cl.shape)}")
            if lp.dtype not in (torch.float16, torch.float32) or cl.dtype not in _CLASS_DTYPES:
                raise BatchError(
                    f"top-k dtypes must be float16 log-probs and integer classes, got {lp.dtype}, {cl.dtype}"
                )
        if self.topk_layers is not None:
            if self.topk_logprob is None:
                raise BatchError("topk_layers describes top-k columns, but the batch has no top-k")
            widths = [w for w, _ in self.topk_layers]
            if min(widths) < 1 or sum(widths) != self.topk_logprob.shape[1]:
                raise BatchError(
                    f"topk_layers widths {widths} must be >= 1 and add up to the {self.topk_logprob.shape[1]} "
                    "top-k columns"
                )
            if not all(wt > 0 for _, wt in self.topk_layers):
                raise BatchError(f"topk_layers weights must be > 0, got {[wt for _, wt in self.topk_layers]}")
        if self.slots is not None and tuple(self.slots.shape) != (b,):
            raise BatchError(f"slots must be ({b},), got {tuple(self.slots.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_topk(self) -> bool:
        return self.topk_logprob is not None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        moved = {
            f.name: v.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def validate_pairs(self) -> None:
        """Raise unless partner labels and lambdas agree within every pair (cheap; runs on CPU)."""
        ya, yb, lam = self.y_a.view(-1, 2), self.y_b.view(-1, 2), self.lam.view(-1, 2)
        if not (torch.equal(yb[:, 0], ya[:, 1]) and torch.equal(yb[:, 1], ya[:, 0])):
            raise BatchError("y_b is not the partner's y_a within each pair (rows 2i, 2i+1)")
        if not torch.equal(lam[:, 0], lam[:, 1]):
            raise BatchError("the two views of a pair must have the same lam")


@runtime_checkable
class BatchSource(Protocol):
    """Where training views come from (synthetic, engine + cache, engine + online teacher).

    Contract: ``epoch_batches(e, s)`` yields this process's batches for steps s, s+1, ...,
    ``steps_per_epoch - 1`` of epoch e; step t's batch is a pure function of (epoch, t, rank, world
    size), so resuming at any step replays the same data. Every batch has exactly the per-process
    batch size. Use :func:`process_slots` to cut steps into slots.
    """

    @property
    def steps_per_epoch(self) -> int: ...

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]: ...


def steps_per_epoch(num_slots: int, global_batch: int) -> int:
    """Whole global batches per epoch; the last partial one is dropped (as timm's drop_last)."""
    return num_slots // global_batch


def process_pairs(step: int, global_batch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Positions, in the epoch's pair order, of the mixing pairs process ``rank`` trains on at ``step``.

    Global step t covers pairs [t*G/2, (t+1)*G/2); rank r takes those j = r (mod world size) within the
    step. The plan keeps a sample's R repeats close together, so striding (as timm's RepeatAugSampler
    does) sends them to different ranks instead of one rank's contiguous block. The union over ranks
    is the same for every world size.
    """
    if global_batch % 2 or (global_batch // 2) % world_size:
        raise BatchError(
            f"global batch {global_batch} does not split into whole mixing pairs over {world_size} processes: "
            f"it must be even and its {global_batch // 2} pairs divisible by {world_size}; "
            f"use a --batch-size that is a multiple of {2 * world_size}"
        )
    half = global_batch // 2
    return np.arange(step * half + rank, (step + 1) * half, world_size, dtype=np.int64)


def pair_slots(pairs: np.ndarray) -> np.ndarray:
    """Slots of whole pairs, in pair order: pair p is slots 2p, 2p+1."""
    pairs = np.asarray(pairs, dtype=np.int64)
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)


def process_slots(step: int, global_batch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Slots of an epoch (in the plan's own order) that process ``rank`` trains on at ``step``:
    the slots of :func:`process_pairs`."""
    return pair_slots(process_pairs(step, global_batch, rank, world_size))


def partner_labels(labels: np.ndarray | torch.Tensor) -> Any:
    """Labels of each view's partner: swap within consecutive pairs."""
    if isinstance(labels, torch.Tensor):
        return labels.view(-1, 2).flip(1).reshape(-1)
    return np.ascontiguousarray(np.asarray(labels).reshape(-1, 2)[:, ::-1].reshape(-1))


def lam_from_records(records: np.ndarray, n_ops: int, image_size: int) -> np.ndarray:
    """Share of the base image for each view record (uint16 (V, record_width)), as float32."""
    return np.array([P.decode(r, n_ops, image_size).mix.lam for r in np.asarray(records)], dtype=np.float32)


def train_batch_from_collated(
    collated: Mapping[str, Any],
    n_ops: int,
    image_size: int,
    topk_logprob: np.ndarray | torch.Tensor | None = None,
    topk_class: np.ndarray | torch.Tensor | None = None,
    topk_layers: tuple[tuple[int, float], ...] | None = None,
) -> TrainBatch:
    """Adapt :func:`kdcache.views.engine.collate_pairs` output (+ the cache's top-k rows for the same
    slots, in the same order; several teachers' side by side, as ``topk_layers`` says) to a
    :class:`TrainBatch`."""
    slots = np.asarray(collated["slots"], dtype=np.int64)
    if slots.size % 2 or np.any(slots[0::2] % 2) or np.any(slots[1::2] != slots[0::2] + 1):
        raise BatchError("collated views are not whole pairs in slot order")
    labels = np.asarray(collated["labels"], dtype=np.int64)

    def t(a: Any) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a)

    return TrainBatch(
        images=torch.as_tensor(collated["images"]),
        y_a=torch.from_numpy(labels.copy()),
        y_b=torch.from_numpy(partner_labels(labels)),
        # collate_pairs carries lam from the params its workers decoded; decode only if it is absent.
        lam=torch.from_numpy(
            np.asarray(collated["lam"], dtype=np.float32)
            if "lam" in collated
            else lam_from_records(collated["records"], n_ops, image_size)
        ),
        topk_logprob=t(topk_logprob),
        topk_class=t(topk_class),
        slots=torch.from_numpy(slots),
        topk_layers=topk_layers,
    )
