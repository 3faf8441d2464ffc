"""The arguments of ``kdcache train`` (one field per option) and the recipe they resolve to.

Not :class:`kdcache.recipe.TrainConfig`, which holds the training hyperparameters of a recipe: these
arguments choose the cache, the data, the device, and override a few of the recipe's settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdcache.recipe import Recipe, RecipeError, load_recipe


@dataclass(frozen=True)
class TrainArgs:
    """The arguments of ``kdcache train``: one field per command-line option."""

    student: str | None
    cache: str | None  # a path, URL or registry key; None: look it up from teacher and data
    out: str
    cache_root: str | None = None  # the registry searched when cache is a key or None
    data: str | None = None
    val_data: str | None = None
    kd: str = "cached"
    teacher: str | None = None
    teacher_weights: str | None = None
    config: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    workers: int = 2
    device: str = "cpu"
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    resume: bool = False
    eval_every: int | None = None
    average_top: int | None = None
    replay_check: int = 64
    checkpoint_every: int = 0
    progress: bool = True
    allow_epoch_reuse: bool = False  # train more epochs than the cache holds, cycling through it


def resolve_recipe(args: TrainArgs, cache_recipe: dict) -> Recipe:
    """Augmentation from the cache (replay needs it exactly); training part from --config and flags."""
    cached = Recipe.from_dict(cache_recipe)
    recipe = cached
    if args.config is not None:
        chosen = load_recipe(args.config)
        is_file = Path(args.config).suffix in (".yaml", ".yml") or Path(args.config).exists()
        # Only an augment section the file actually writes can conflict; a missing one means "the cache's".
        has_augment = is_file and "augment" in (yaml.safe_load(Path(args.config).read_text()) or {})
        if has_augment and chosen.augment != cached.augment:
            diffs = [
                f.name
                for f in dataclasses.fields(cached.augment)
                if getattr(chosen.augment, f.name) != getattr(cached.augment, f.name)
            ]
            raise RecipeError(
                f"{args.config} changes the augmentation ({', '.join(diffs)}), which would break replay of the "
                "cache's views; remove its `augment` section or build a cache with it"
            )
        recipe = dataclasses.replace(cached, train=chosen.train)
    t = recipe.train
    changes: dict = {}
    if args.student:
        changes["model"] = args.student
    if args.batch_size is not None:
        changes["global_batch"] = args.batch_size
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.eval_every is not None:
        changes["eval_every"] = args.eval_every
    if args.average_top is not None:
        changes["average_top"] = args.average_top
    if args.epochs is not None and args.epochs != t.epochs:
        cooldown = min(t.cooldown_epochs, max(0, args.epochs - t.warmup_epochs - 1))
        if args.epochs - cooldown < 1:
            raise RecipeError(f"--epochs {args.epochs} is too short for the recipe's schedule")
        changes.update(
            epochs=args.epochs,
            cosine_epochs=args.epochs - cooldown,
            cooldown_epochs=cooldown,
            warmup_epochs=min(t.warmup_epochs, args.epochs - cooldown - 1),
        )
    return recipe.replace_train(**changes) if changes else recipe
