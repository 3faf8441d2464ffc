"""Recipes: frozen, YAML-serialisable configuration of the views and of student training."""

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
        for name in ("image_size", "repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise RecipeError(f"augment.{name} must be an integer, got {v!r}")
        for name in ("scale", "ratio"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != 2 or not all(isinstance(x, (int, float)) for x in v):
                raise RecipeError(f"augment.{name} must be two numbers [lo, hi], got {v!r}")
        if not 0 <= self.translate_pct <= 1:
            raise RecipeError(f"augment.translate_pct must be in [0, 1], got {self.translate_pct}")
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
class TrainConfig:
    """The training part of a recipe: student, optimiser, schedule, EMA, loss and evaluation.

    Defaults are the seed recipe. The learning-rate schedule, in epochs (stepped per optimiser update,
    so ``t`` below is fractional): linear warm-up from ``warmup_lr`` to ``lr`` over
    ``[0, warmup_epochs)``, cosine from ``lr`` at ``warmup_epochs`` to ``lr_min`` at ``cosine_epochs``,
    then ``lr_min`` for ``cooldown_epochs``; ``epochs`` = ``cosine_epochs`` + ``cooldown_epochs``.
    ``global_batch`` is summed over all processes; each process gets ``global_batch / world_size``
    views, which must be even so that a mixing pair never straddles two processes.
    """

    # student (timm.create_model; always random init)
    model: str = "resnet50"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth; the seed recipe uses none
    # optimiser (timm.optim.create_optimizer_v2; norm and bias parameters get no weight decay)
    opt: str = "lamb"
    lr: float = 5e-3
    weight_decay: float = 0.02
    opt_eps: float = 1e-6
    opt_betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 1.0  # None: no clipping
    clip_mode: str = "norm"  # norm | value | agc (timm.utils.dispatch_clip_grad)
    global_batch: int = 1536
    # schedule (timm CosineLRScheduler, stepped per update)
    epochs: int = 610
    warmup_epochs: int = 5
    warmup_lr: float = 1e-5  # timm train.py's default --warmup-lr
    cosine_epochs: int = 600
    lr_min: float = 5e-5
    cooldown_epochs: int = 10
    # EMA of the student (timm ModelEmaV3), final model = mean of the best EMA checkpoints. The seed's
    # (SuperGradients') ramp: the decay of update u is ema_decay * (1 - exp(-ema_beta * (u - 1) / total)).
    # ema_warmup is timm's warm-up instead (min(ema_decay, 1 - u^(-2/3))); ema_ramp "none" and no warm-up:
    # ema_decay throughout.
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    ema_ramp: str = "exp"  # "exp" (SuperGradients' ExpDecay) or "none"
    ema_beta: float = 15.0
    average_top: int = 10
    # loss: kd_weight * T^2 * KL(teacher_T || student_T) + ce_weight * CE(student, smoothed mixed labels)
    kd_weight: float = 0.8
    ce_weight: float = 0.2
    temperature: float = 1.0
    label_smoothing: float = 0.1
    # evaluation: resize to floor(image_size / eval_crop_pct), centre crop image_size
    eval_crop_pct: float = 0.875
    eval_interpolation: str = "bilinear"  # the seed's 81.91% was measured with bilinear 256 -> 224
    eval_every: int = 1  # epochs
    # model-init seed (the views have their own seed, stored with the cache)
    seed: int = 0
    log_every: int = 50  # optimiser updates between step-level log lines / TensorBoard points

    def __post_init__(self) -> None:
        def bad(msg: str) -> RecipeError:
            return RecipeError(f"train.{msg}")

        self._check_types()
        if not self.model:
            raise bad("model must be a timm model name")
        for name in ("drop_rate", "drop_path_rate", "label_smoothing"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise bad(f"{name} must be in [0, 1), got {v}")
        for name in ("lr", "opt_eps", "temperature"):
            if not getattr(self, name) > 0:
                raise bad(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_lr", "lr_min", "kd_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(self.opt_betas) != 2 or not all(0 <= b < 1 for b in self.opt_betas):
            raise bad(f"opt_betas must be two values in [0, 1), got {self.opt_betas}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise bad(f"clip_grad must be > 0 or null, got {self.clip_grad}")
        if self.clip_mode not in ("norm", "value", "agc"):
            raise bad(f"clip_mode must be norm, value or agc, got {self.clip_mode!r}")
        if self.global_batch < 2 or self.global_batch % 2:
            raise bad(f"global_batch must be even and >= 2 (mixing pairs stay whole), got {self.global_batch}")
        if self.lr_min > self.lr:
            raise bad(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        if self.cosine_epochs < 1 or self.warmup_epochs < 0 or self.cooldown_epochs < 0:
            raise bad("cosine_epochs must be >= 1, warmup_epochs and cooldown_epochs >= 0")
        if self.warmup_epochs >= self.cosine_epochs:
            raise bad(f"warmup_epochs ({self.warmup_epochs}) must be < cosine_epochs ({self.cosine_epochs})")
        if self.epochs != self.cosine_epochs + self.cooldown_epochs:
            raise bad(
                f"epochs ({self.epochs}) must equal cosine_epochs + cooldown_epochs "
                f"({self.cosine_epochs} + {self.cooldown_epochs}); change them together"
            )
        if not 0 <= self.ema_decay < 1:
            raise bad(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_ramp not in ("exp", "none"):
            raise bad(f"ema_ramp must be exp or none, got {self.ema_ramp!r}")
        if self.ema_ramp == "exp" and self.ema_warmup:
            raise bad(
                "ema_warmup (timm's warm-up) and ema_ramp exp (the seed's) are two ramps of the EMA decay: "
                "set ema_ramp: none to keep timm's"
            )
        if not self.ema_beta > 0:
            raise bad(f"ema_beta must be > 0, got {self.ema_beta}")
        if self.average_top < 1:
            raise bad(f"average_top must be >= 1, got {self.average_top}")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise bad("kd_weight and ce_weight cannot both be 0")
        if not 0 < self.eval_crop_pct <= 1:
            raise bad(f"eval_crop_pct must be in (0, 1], got {self.eval_crop_pct}")
        if self.eval_interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
            raise bad(
                f"eval_interpolation must be bilinear, bicubic, nearest or lanczos, got {self.eval_interpolation!r}"
            )
        if self.eval_every < 1 or self.log_every < 1:
            raise bad("eval_every and log_every must be >= 1")
        if self.seed < 0:
            raise bad(f"seed must be non-negative, got {self.seed}")

    def _check_types(self) -> None:
        """Refuse wrongly typed values with a clear message; accept floats written the YAML 1.1 way.

        PyYAML reads ``lr: 5e-3`` (no dot) as the string '5e-3': such strings are parsed as floats.
        """
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), str(f.type)
            if kind.startswith("float"):
                if v is None and "None" in kind:
                    continue
                if isinstance(v, str):
                    try:
                        v = float(v)
                    except ValueError:
                        raise RecipeError(f"train.{f.name} must be a number, got {v!r}") from None
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise RecipeError(f"train.{f.name} must be a number, got {v!r}")
                object.__setattr__(self, f.name, float(v))
            elif kind == "int":
                if isinstance(v, bool) or not isinstance(v, int):
                    raise RecipeError(f"train.{f.name} must be an integer, got {v!r}")
            elif kind == "bool":
                if not isinstance(v, bool):
                    raise RecipeError(f"train.{f.name} must be true or false, got {v!r}")
            elif kind == "str":
                if not isinstance(v, str):
                    raise RecipeError(f"train.{f.name} must be a string, got {v!r}")
            elif kind.startswith("tuple[float"):
                try:
                    object.__setattr__(self, f.name, tuple(float(x) for x in v))
                except (TypeError, ValueError):
                    raise RecipeError(f"train.{f.name} must be a list of numbers, got {v!r}") from None

    def per_process_batch(self, world_size: int) -> int:
        """Views per process and step; pairs must stay whole, so the share must be even."""
        if world_size < 1:
            raise RecipeError(f"world size must be >= 1, got {world_size}")
        if self.global_batch % world_size:
            raise RecipeError(
                f"train.global_batch (--batch-size) {self.global_batch} is not divisible by the world size "
                f"{world_size}: choose a global batch divisible by 2 x {world_size}"
            )
        per = self.global_batch // world_size
        if per % 2:
            raise RecipeError(
                f"train.global_batch (--batch-size) {self.global_batch} / world size {world_size} = {per} views "
                "per process is odd; "
                "mixing pairs must stay whole: choose a global batch divisible by 2 x world size"
            )
        return per


@dataclass(frozen=True)
class Recipe:
    name: str = "seed"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return _build(cls, data, "")

    def replace_augment(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, augment=dataclasses.replace(self.augment, **changes))

    def replace_train(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))


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


_DATACLASS_FIELDS: dict[tuple[type, str], type] = {(Recipe, "augment"): AugmentConfig, (Recipe, "train"): TrainConfig}


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
