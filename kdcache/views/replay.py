"""Re-rendering stored views and comparing digests: shared by `verify` and `train`'s start check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdcache.data.source import DataSourceError
from kdcache.data.wds_source import open_source
from kdcache.recipe import Recipe
from kdcache.views import ReplayError, ViewEngine
from kdcache.views.rng import Domain, keyed_generator


class ReplayMismatch(ValueError):
    """A re-rendered view differs from what the teacher saw."""


@dataclass(frozen=True)
class Mismatch:
    epoch: int
    slot: int
    sample_id: int
    path: str
    what: str

    def __str__(self) -> str:
        return f"epoch {self.epoch} slot {self.slot} (sample {self.sample_id}, {self.path}): {self.what}"


LIKELY_CAUSE = (
    "Re-rendering gave different pixels than the build. The usual cause is a different Pillow, timm or "
    "numpy version than the cache was built with (see `kdcache info --json` library_versions), or images "
    "changed on disk. Rebuild the cache or install the recorded versions."
)


def open_replay(manifest, data: str | None = None) -> ViewEngine:
    """The view engine the cache was built with, over ``data`` (default: the recorded source)."""
    spec = data or manifest.dataset.get("source")
    if not spec:
        raise DataSourceError("the cache does not record where its images are; pass --data")
    source = open_source(spec)
    expected = manifest.dataset["fingerprint"]
    if source.fingerprint != expected:
        raise DataSourceError(
            f"dataset {spec} does not match the cache: fingerprint {source.fingerprint[:16]}... != "
            f"{expected[:16]}... recorded at build time (files added, removed, renamed or resized). "
            "Pass the --data the cache was built from, or build a new cache."
        )
    recipe = Recipe.from_dict(manifest.recipe)
    return ViewEngine(source, recipe.augment, manifest.seed)


def sample_pairs(seed: int, num_slots: int, epochs: list[int], n_views: int) -> list[tuple[int, int]]:
    """n_views/2 distinct (epoch, pair) to re-check, spread over the given epochs."""
    if n_views <= 0 or not epochs:
        return []
    g = keyed_generator(seed, Domain.CHECK, 0)
    per_epoch = num_slots // 2
    total = per_epoch * len(epochs)
    k = min(max(1, n_views // 2), total)
    flat = np.sort(g.choice(total, size=k, replace=False))
    return [(epochs[int(i // per_epoch)], int(i % per_epoch)) for i in flat]


def replay_sample(reader, engine: ViewEngine, n_views: int):
    """Re-render ``n_views`` sampled views of a cache's complete epochs from their stored records.

    Yields (epoch block, [(RenderedPair | None, [Mismatch])]) per epoch; each block is loaded once.
    """
    m = reader.manifest
    by_epoch: dict[int, list[int]] = {}
    for e, p in sample_pairs(m.seed, m.num_slots, sorted(reader.epochs_complete), n_views):
        by_epoch.setdefault(e, []).append(p)
    for epoch, pairs in by_epoch.items():
        block = reader.load_epoch(epoch)
        yield block, list(replay_pairs(engine, epoch, pairs, block.params, block.digest, block.sample_id, block.repeat))


def replay_pairs(
    engine: ViewEngine,
    epoch: int,
    pairs: list[int],
    params: np.ndarray,
    digests: np.ndarray,
    sample_ids: np.ndarray,
    repeats: np.ndarray,
):
    """Replay each pair from its stored records; yields (RenderedPair | None, [Mismatch])."""
    plan = engine.plan(epoch)
    for pair in pairs:
        s = slice(2 * pair, 2 * pair + 2)
        problems: list[Mismatch] = []
        ids = plan.sample_ids[s]
        for k in range(2):
            slot = 2 * pair + k
            sid = int(sample_ids[slot])
            if sid != int(ids[k]) or int(repeats[slot]) != int(plan.repeats[slot]):
                problems.append(
                    Mismatch(
                        epoch,
                        slot,
                        sid,
                        _name(engine, sid),
                        f"stored (sample, repeat) = ({sid}, {int(repeats[slot])}) but the epoch "
                        f"plan says ({int(ids[k])}, {int(plan.repeats[slot])})",
                    )
                )
        if problems:
            yield None, problems
            continue
        try:
            r = engine.render_pair(epoch, pair, params[s])
        except ReplayError as e:
            yield None, [Mismatch(epoch, 2 * pair, int(ids[0]), _name(engine, int(ids[0])), f"bad params: {e}")]
            continue
        for k in range(2):
            slot = 2 * pair + k
            if int(r.digests[k]) != int(digests[slot]):
                problems.append(
                    Mismatch(
                        epoch,
                        slot,
                        int(ids[k]),
                        _name(engine, int(ids[k])),
                        f"digest {int(r.digests[k]):016x} != stored {int(digests[slot]):016x}",
                    )
                )
        yield r, problems


def _name(engine: ViewEngine, sid: int) -> str:
    try:
        return engine.source.name(sid)
    except (IndexError, KeyError):
        return "?"
