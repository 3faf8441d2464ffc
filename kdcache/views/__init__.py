"""The deterministic view engine: epoch plans, pure samplers, a renderer without randomness."""

from kdcache.views.engine import (
    PairBatchDataset,
    PairDataset,
    RenderedPair,
    ReplayError,
    ViewEngine,
    collate_pairs,
    keep_collated,
)
from kdcache.views.plan import EpochPlan, make_epoch_plan

__all__ = [
    "EpochPlan",
    "PairBatchDataset",
    "PairDataset",
    "RenderedPair",
    "ReplayError",
    "ViewEngine",
    "collate_pairs",
    "keep_collated",
    "make_epoch_plan",
]
