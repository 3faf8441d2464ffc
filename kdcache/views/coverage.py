"""How much of the dataset a set of cached epochs shows, computed from the epoch plans.

With repeated augmentation x R one epoch shows about N/R samples, R times each, so a student that
replays one cached epoch every epoch never sees two thirds of the data (R=3). These figures are what
``kdcache train`` refuses on and ``kdcache info`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdcache.views.plan import make_epoch_plan, num_slots_for

# Beyond this many epochs the plans are not all laid out (each costs ~0.2 s at ImageNet size): the
# share is estimated from the first MAX_EXACT_EPOCHS, treating epochs as independent draws, which
# they are (each epoch's permutation comes from its own keyed generator).
MAX_EXACT_EPOCHS = 32


@dataclass(frozen=True)
class Coverage:
    """What ``epochs`` cached epochs of a seed's views show of ``num_samples`` samples."""

    num_samples: int
    epochs: int
    samples_seen: int  # samples with at least one view in those epochs
    views: int  # views in those epochs (every slot is a distinct view: its own (epoch, sample, repeat))
    exact: bool  # False: samples_seen estimated from the first MAX_EXACT_EPOCHS epochs

    @property
    def share_seen(self) -> float:
        return self.samples_seen / self.num_samples

    @property
    def views_per_sample(self) -> float:
        """Mean distinct views per sample that is seen at all."""
        return self.views / max(self.samples_seen, 1)

    def describe(self) -> str:
        how = "" if self.exact else f" (estimated from the first {MAX_EXACT_EPOCHS} epochs)"
        return (
            f"{self.epochs} cached epoch(s) show {100 * self.share_seen:.1f}% of the {self.num_samples:,} samples, "
            f"{self.views_per_sample:.2f} distinct views per sample seen{how}"
        )

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "samples_seen": self.samples_seen,
            "share_seen": round(self.share_seen, 6),
            "views_per_sample": round(self.views_per_sample, 4),
            "exact": self.exact,
        }


def coverage(seed: int, epochs: list[int] | range, num_samples: int, repeats: int) -> Coverage:
    """Coverage of the given cached epochs (the epoch numbers, as a cache lists its complete ones)."""
    epochs = sorted(set(int(e) for e in epochs))
    views = len(epochs) * num_slots_for(num_samples)
    if not epochs:
        return Coverage(num_samples, 0, 0, 0, True)
    seen = np.zeros(num_samples, dtype=bool)
    exact = epochs[:MAX_EXACT_EPOCHS]
    for e in exact:
        seen[make_epoch_plan(seed, e, num_samples, repeats).sample_ids] = True
    if len(exact) == len(epochs):
        return Coverage(num_samples, len(epochs), int(seen.sum()), views, True)
    # Independent epochs, each showing a share p of the samples: 1 - (1 - p)^E are seen.
    p = 1.0 - (1.0 - seen.mean()) ** (1.0 / len(exact))
    share = 1.0 - (1.0 - p) ** len(epochs)
    return Coverage(num_samples, len(epochs), round(float(share) * num_samples), views, False)
