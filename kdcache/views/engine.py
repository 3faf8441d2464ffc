"""The view engine: epoch plan + samplers + renderer over a data source. Shared by build and train."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from kdcache.data.rgb import to_rgb
from kdcache.data.source import DataSourceError, ImageSource
from kdcache.recipe import AugmentConfig
from kdcache.views import params as P
from kdcache.views.plan import EpochPlan, make_epoch_plan
from kdcache.views.render import digest, mix_pair_into, render_image
from kdcache.views.sampling import (
    image_generator,
    mix_generator,
    ra_spec,
    sample_image_params,
    sample_mix_params,
)


@dataclass(frozen=True)
class RenderedPair:
    """The two output views of mixing pair ``pair`` (slots 2*pair and 2*pair + 1)."""

    epoch: int
    pair: int
    sample_ids: np.ndarray  # int64 (2,)
    repeats: np.ndarray  # uint8 (2,)
    labels: np.ndarray  # int64 (2,): label of each output's base image; partner = the other
    images: np.ndarray  # uint8 (2, S, S, 3)
    records: np.ndarray  # uint16 (2, record_width)
    digests: np.ndarray  # uint64 (2,)
    params: tuple[P.ViewParams, P.ViewParams]

    @property
    def slots(self) -> tuple[int, int]:
        return 2 * self.pair, 2 * self.pair + 1


class _BatchImages:
    """The decoded source images of one batch: each decoded on first use, dropped after its last view."""

    def __init__(self, load: Callable[[int], Image.Image], plan: EpochPlan, slots: np.ndarray):
        self._load = load
        self._uses = Counter(plan.sample_ids[slots].tolist())
        self._images: dict[int, Image.Image] = {}

    def take(self, sample_id: int) -> Image.Image:
        im = self._images.get(sample_id)
        if im is None:
            im = self._load(sample_id)
        self._uses[sample_id] -= 1
        if self._uses[sample_id] > 0:
            self._images[sample_id] = im
        else:
            self._images.pop(sample_id, None)
        return im


def _pair_slots(plan: EpochPlan, pairs: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pairs as int64, their slots in order 2p, 2p + 1, ...); refuses pairs outside the epoch."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1)
    bad = pairs[(pairs < 0) | (pairs >= plan.num_pairs)]
    if bad.size:
        raise IndexError(f"pair {int(bad[0])} out of range for an epoch of {plan.num_pairs} pairs")
    return pairs, np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()


def _image_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a DataLoader worker, in shared memory (as default_collate does),
    so that passing it to the main process does not copy it once more."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=torch.uint8).new(storage).resize_(shape)


class ReplayError(ValueError):
    """Stored params cannot be replayed (malformed, or inconsistent within a pair)."""


class ViewEngine:
    def __init__(self, source: ImageSource, augment: AugmentConfig, seed: int):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.source = source
        self.augment = augment
        self.seed = int(seed)
        self.spec = ra_spec(augment)
        self.n_ops = 0 if self.spec is None else self.spec.num_layers
        self._plan: EpochPlan | None = None  # last plan used; plans are pure and their arrays read-only

    @property
    def record_width(self) -> int:
        return P.record_width(self.n_ops)

    @cached_property
    def num_samples(self) -> int:
        return len(self.source)

    def plan(self, epoch: int) -> EpochPlan:
        # Cached: make_epoch_plan copies the whole layout (~11 MB for ImageNet, ~2 ms) on every call,
        # and render_pair needs the plan for every pair.
        plan = self._plan
        if plan is None or plan.epoch != epoch:
            plan = self._plan = make_epoch_plan(self.seed, epoch, self.num_samples, self.augment.repeats)
        return plan

    def _load(self, sample_id: int):
        img = self.source.open(sample_id)
        try:
            return to_rgb(img)  # pixels are decoded here: a truncated file fails now, not at open()
        except OSError as e:
            raise DataSourceError(f"cannot decode image {self.source.name(sample_id)} (sample {sample_id}): {e}") from e

    def sample_pair(self, epoch: int, pair: int) -> tuple[P.ViewParams, P.ViewParams]:
        """Params of both outputs of a pair (reads image headers for their sizes)."""
        plan = self.plan(epoch)
        s0, s1 = plan.pair_slots(pair)
        sizes = []
        for s in (s0, s1):
            with self.source.open(int(plan.sample_ids[s])) as im:  # header only: the size
                sizes.append(im.size)
        return self._sample(plan, pair, sizes)

    def _sample(self, plan: EpochPlan, pair: int, sizes) -> tuple[P.ViewParams, P.ViewParams]:
        mix = sample_mix_params(mix_generator(self.seed, plan.epoch, pair), self.augment.image_size, self.augment)
        out = []
        for slot, (w, h) in zip(plan.pair_slots(pair), sizes, strict=True):
            g = image_generator(self.seed, plan.epoch, int(plan.sample_ids[slot]), int(plan.repeats[slot]))
            out.append(P.ViewParams(sample_image_params(g, w, h, self.augment, self.spec), mix))
        return out[0], out[1]

    def render_pair(self, epoch: int, pair: int, records: np.ndarray | None = None) -> RenderedPair:
        """Sample (records=None) or replay stored records (uint16 (2, record_width)) and render."""
        return self.render_pairs(epoch, [pair], records)[0]

    def render_pairs(
        self, epoch: int, pairs: Sequence[int] | np.ndarray, records: np.ndarray | None = None
    ) -> list[RenderedPair]:
        """:meth:`render_pair` for each pair of one epoch, decoding each distinct source image once.

        ``records``: None to sample, or uint16 (2 * len(pairs), record_width), the pairs' stored
        records in order, to replay. Decoded images live only for this call, in a dict that drops each
        one after its last view here: memory is bounded by one batch's decoded images.
        """
        plan = self.plan(epoch)
        pairs, slots = _pair_slots(plan, pairs)
        records = self._batch_records(records, len(pairs))
        images = _BatchImages(self._load, plan, slots)
        size = self.augment.image_size
        out = []
        for k, pair in enumerate(pairs.tolist()):
            buf = np.empty((2, size, size, 3), dtype=np.uint8)
            rec = None if records is None else records[2 * k : 2 * k + 2]
            params, recs, digests = self._render_into(plan, pair, rec, images, buf)
            s0, s1 = plan.pair_slots(pair)
            ids = plan.sample_ids[[s0, s1]].astype(np.int64)
            out.append(
                RenderedPair(
                    epoch=epoch,
                    pair=pair,
                    sample_ids=ids,
                    repeats=plan.repeats[[s0, s1]].astype(np.uint8),
                    labels=np.array([self.source.label(int(i)) for i in ids], dtype=np.int64),
                    images=buf,
                    records=recs,
                    digests=digests,
                    params=params,
                )
            )
        return out

    def render_batch(
        self, epoch: int, pairs: Sequence[int] | np.ndarray, records: np.ndarray | None = None
    ) -> dict[str, object]:
        """:meth:`render_pairs`, already collated: the dict :func:`collate_pairs` makes of its output.

        Views are rendered straight into the batch's image tensor (in a DataLoader worker, one in
        shared memory, so sending it to the main process copies nothing).
        """
        plan = self.plan(epoch)
        pairs, slots = _pair_slots(plan, pairs)
        if pairs.size == 0:
            raise ValueError("a batch needs at least one pair")
        records = self._batch_records(records, len(pairs))
        images = _BatchImages(self._load, plan, slots)
        size, n = self.augment.image_size, 2 * len(pairs)
        tensor = _image_tensor((n, size, size, 3))
        pixels = tensor.numpy()
        out_records = np.empty((n, self.record_width), dtype=np.uint16)
        digests = np.empty(n, dtype=np.uint64)
        lam = np.empty(n, dtype=np.float32)
        for k, pair in enumerate(pairs.tolist()):
            rows = slice(2 * k, 2 * k + 2)
            rec = None if records is None else records[rows]
            params, out_records[rows], digests[rows] = self._render_into(plan, pair, rec, images, pixels[rows])
            lam[rows] = [p.mix.lam for p in params]
        ids = plan.sample_ids[slots].astype(np.int64)
        return {
            "epoch": epoch,
            "pairs": pairs,
            "slots": slots,
            "sample_ids": ids,
            "repeats": plan.repeats[slots].astype(np.uint8),
            "labels": np.array([self.source.label(i) for i in ids.tolist()], dtype=np.int64),
            "images": tensor,
            "records": out_records,
            "lam": lam,
            "digests": digests,
        }

    def _batch_records(self, records: np.ndarray | None, num_pairs: int) -> np.ndarray | None:
        if records is None:
            return None
        records = np.asarray(records)
        if records.shape != (2 * num_pairs, self.record_width):
            expected = (2 * num_pairs, self.record_width)
            raise ReplayError(f"records of {num_pairs} pairs have shape {records.shape}, expected {expected}")
        return records

    def _render_into(
        self, plan: EpochPlan, pair: int, records: np.ndarray | None, images: _BatchImages, out: np.ndarray
    ) -> tuple[tuple[P.ViewParams, P.ViewParams], np.ndarray, np.ndarray]:
        """Render pair ``pair`` into ``out`` (uint8 (2, S, S, 3)); returns (params, records, digests)."""
        ims = [images.take(int(plan.sample_ids[s])) for s in plan.pair_slots(pair)]
        params = self._sample(plan, pair, [im.size for im in ims]) if records is None else self.decode_pair(records)
        size = self.augment.image_size
        # render_image starts with a crop, which returns a new image: the shared decoded image is never
        # modified, so its other views in the batch see the same pixels.
        base = [render_image(im, p.image, size, self.spec) for im, p in zip(ims, params, strict=True)]
        mix_pair_into(base[0], base[1], params[0].mix, out)
        recs = np.stack([P.encode(p, self.n_ops) for p in params])
        return params, recs, np.array([digest(out[0]), digest(out[1])], dtype=np.uint64)

    def decode_pair(self, records: np.ndarray) -> tuple[P.ViewParams, P.ViewParams]:
        records = np.asarray(records)
        if records.shape != (2, self.record_width):
            raise ReplayError(f"pair records have shape {records.shape}, expected (2, {self.record_width})")
        try:
            a, b = (P.decode(r, self.n_ops, self.augment.image_size) for r in records)
        except P.ParamDecodeError as e:
            raise ReplayError(str(e)) from e
        if a.mix != b.mix:
            raise ReplayError(f"the two views of a pair disagree on the mix: {a.mix} vs {b.mix}")
        return a, b


class PairDataset(Dataset):
    """Torch dataset over the mixing pairs of one epoch; item i is pair ``pairs[i]``.

    Every item is a pure function of (engine config, epoch, pair), so any number of DataLoader
    workers, in any order, yields the same views.
    """

    def __init__(
        self, engine: ViewEngine, epoch: int, pairs: Sequence[int] | None = None, records: np.ndarray | None = None
    ):
        self.engine = engine
        self.epoch = epoch
        n = engine.plan(epoch).num_pairs
        self.pairs = np.arange(n) if pairs is None else np.asarray(pairs, dtype=np.int64)
        # records: optional uint16 (num_slots, width) of the whole epoch, to replay instead of sample.
        self.records = records

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def __getitem__(self, i: int) -> RenderedPair:
        pair = int(self.pairs[i])
        rec = None if self.records is None else self.records[2 * pair : 2 * pair + 2]
        return self.engine.render_pair(self.epoch, pair, rec)


def collate_pairs(batch: list[RenderedPair]) -> dict[str, object]:
    """Flatten pairs into views in slot order; images become one uint8 NHWC tensor."""
    return {
        "epoch": batch[0].epoch,
        "pairs": np.array([b.pair for b in batch], dtype=np.int64),
        "slots": np.array([s for b in batch for s in b.slots], dtype=np.int64),
        "sample_ids": np.concatenate([b.sample_ids for b in batch]),
        "repeats": np.concatenate([b.repeats for b in batch]),
        "labels": np.concatenate([b.labels for b in batch]),
        "images": torch.from_numpy(np.concatenate([b.images for b in batch])),
        "records": np.concatenate([b.records for b in batch]),
        # Share of each view's base image; the workers decoded the params already.
        "lam": np.array([p.mix.lam for b in batch for p in b.params], dtype=np.float32),
        "digests": np.concatenate([b.digests for b in batch]),
    }


class PairBatchDataset(Dataset):
    """Torch dataset whose item i is the whole batch ``batches[i]`` (pair indices of one epoch), collated.

    Use with ``DataLoader(ds, batch_size=None, collate_fn=keep_collated, ...)``: each worker renders
    whole batches through :meth:`ViewEngine.render_batch`, so a source image shown by several views of
    a batch (repeated augmentation) is decoded once. Items equal ``collate_pairs`` over the batch's
    :class:`PairDataset` items, view for view.
    """

    def __init__(
        self,
        engine: ViewEngine,
        epoch: int,
        batches: Sequence[Sequence[int] | np.ndarray],
        records: np.ndarray | None = None,
    ):
        self.engine = engine
        self.epoch = epoch
        self.batches = [np.asarray(b, dtype=np.int64) for b in batches]
        # records: optional uint16 (num_slots, width) of the whole epoch, to replay instead of sample.
        self.records = records

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, object]:
        pairs = self.batches[i]
        rec = None
        if self.records is not None:
            slots = np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()
            rec = self.records[slots]
        return self.engine.render_batch(self.epoch, pairs, rec)


def keep_collated(batch: dict[str, object]) -> dict[str, object]:
    """collate_fn for a DataLoader over :class:`PairBatchDataset`: items are collated already.

    (With batch_size=None, DataLoader's default would turn every numpy array into a tensor.)
    """
    return batch
