"""Recipes: frozen, YAML-serialisable configuration of the views (and, later, training)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe file or preset is malformed."""


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation part of a recipe: everything that determines the views.

    Defaults are the seed recipe (timm semantics): RandomResizedCrop with random bilinear/bicubic,
    horizontal flip, RandAugment 'rand-m7-mstd0.5', Mixup 0.2 / CutMix 1.0 at prob 1.0, switch 0.5,
    repeated augmentation x3.
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "random"  # bilinear | bicubic | random
    hflip: float = 0.5
    auto_augment: str | None = "rand-m7-mstd0.5"  # timm RandAugment config string, or None
    # RandAugment fill colour and translate range, as timm's create_transform derives them for
    # ImageNet mean (round(255 * mean)) and translate_pct 0.45.
    aug_fill: tuple[int, int, int] = (124, 116, 104)
    translate_pct: float = 0.45
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    repeats: int = 3

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size > 4096:
            raise RecipeError(f"augment.image_size must be in 8..4096, got {self.image_size}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise RecipeError(f"augment.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise RecipeError(f"augment.ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if self.interpolation not in ("bilinear", "bicubic", "random"):
            raise RecipeError(f"augment.interpolation must be bilinear, bicubic or random, got {self.interpolation!r}")
        for name in ("hflip", "mix_prob", "switch_prob"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise RecipeError(f"augment.{name} must be a probability, got {v}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise RecipeError("augment.mixup_alpha and augment.cutmix_alpha must be >= 0")
        if not 1 <= self.repeats <= 255:
            raise RecipeError(f"augment.repeats must be in 1..255, got {self.repeats}")
        if len(self.aug_fill) != 3 or not all(0 <= c <= 255 for c in self.aug_fill):
            raise RecipeError(f"augment.aug_fill must be three values in 0..255, got {self.aug_fill}")


@dataclass(frozen=True)
class Recipe:
    name: str = "seed"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return _build(cls, data, "")

    def replace_augment(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, augment=dataclasses.replace(self.augment, **changes))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(f"{where or 'recipe'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        fields[name]
        key = f"{where}.{name}" if where else name
        sub = _DATACLASS_FIELDS.get((cls, name))
        if sub is not None:
            kwargs[name] = _build(sub, value, key)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise RecipeError(f"{where or 'recipe'}: {e}") from e


_DATACLASS_FIELDS: dict[tuple[type, str], type] = {(Recipe, "augment"): AugmentConfig}


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("kdcache.presets").iterdir() if p.name.endswith(".yaml")
    )


def load_recipe(spec: str | Path | None) -> Recipe:
    """A preset name (e.g. 'seed') or a path to a YAML file; None means the seed preset."""
    if spec is None:
        spec = "seed"
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        text = path.read_text()
    else:
        res = resources.files("kdcache.presets") / f"{spec}.yaml"
        if not res.is_file():
            raise RecipeError(f"unknown recipe preset {spec!r}; presets: {', '.join(preset_names())}, or a .yaml path")
        text = res.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {spec}: not valid YAML: {e}") from e
    return Recipe.from_dict(data or {})
