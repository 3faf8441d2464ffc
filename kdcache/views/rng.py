"""Counter-based random generators keyed by what a draw is *for*, never by call order.

Every random choice in kdcache comes from ``keyed_generator(seed, domain, ...)``: a Philox generator
whose key is derived (through ``SeedSequence``) from the seed, a domain tag and integer coordinates
such as (epoch, sample_id, repeat). Two processes, or two DataLoader workers, asking for the same
key get the same stream, whatever they computed before. No global RNG state is read or written.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Domain(IntEnum):
    """Separates streams that share coordinates (e.g. epoch plan vs. per-image params)."""

    PLAN = 1
    IMAGE = 2
    MIX = 3
    CHECK = 4  # sampling which views to re-check (replay checks, verify)
    CYCLE = 5  # the order of a cached epoch's pairs when training cycles through the cache again
    LABEL_DRAWS = 6  # format 3's soft labels: each view's offset for its systematic draws


def keyed_generator(seed: int, domain: Domain, *coords: int) -> np.random.Generator:
    """A fresh generator for one key; pure function of its arguments."""
    if not 0 <= seed < 2**32 or any(not 0 <= c < 2**32 for c in coords):
        # SeedSequence splits larger integers into 32-bit words and drops trailing zero words, so
        # seed 2**32 + 5 at epoch 0 would alias seed 5 at epoch 1: keep every entry one word.
        raise ValueError(f"seed and coordinates must be in [0, 2**32), got seed={seed} coords={coords}")
    entropy = [int(seed), int(domain), *(int(c) for c in coords)]
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(entropy)))
