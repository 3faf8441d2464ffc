"""The arguments of ``kdcache build`` as one frozen config: one field per command-line option."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kdcache.errors import UsageError
from kdcache.models.precision import amp_dtype, has_split_head, precision_name

# Format 2's tail: ranks 11-20 after a top-10 keep a 1000-class cache near 64 B/view (docs/benchmarks.md).
DEFAULT_TAIL_CLASSES = 10
# Format 3's draws from the rest of the distribution (store/draws.py). Top-3 + 40 draws: of the points
# measured (docs/parity.md, 1000 classes) the student closest to online KD within 64 B/view on disk.
DEFAULT_DRAWS = 40
# The exact top-k of formats 1 and 2, and of format 3 (docs/parity.md: the students they train).
DEFAULT_TOPK = 10
DEFAULT_DRAW_TOPK = 3


@dataclass(frozen=True)
class BuildConfig:
    teacher: str
    data: str
    out: str | None = None  # None: the registry under cache_root picks ROOT/KEY/FORMAT
    cache: str | None = None  # an existing cache by registry key (or path): add this teacher to its views
    cache_root: str | None = None  # None: $KDCACHE_HOME or the user's cache directory
    format: str = "zarr"
    epochs: int | None = None  # None: the recipe's training epochs (a student should not cycle a short cache)
    repeats: int | None = None  # None: the recipe's
    # None: chosen for the teacher (for_classes): every class exactly where they fit in DEFAULT_TOPK,
    # else format 3's DEFAULT_DRAW_TOPK + DEFAULT_DRAWS draws; formats 1 and 2 default to DEFAULT_TOPK,
    # and a --topk without a format means format 1 (what it meant before format 3).
    topk: int | None = None
    format_version: int | None = None  # 1: top-k; 2: plus a 4-bit tail (store/labels.py); 3: plus draws
    tail_classes: int | None = None  # format 2's tail; None: DEFAULT_TAIL_CLASSES
    draws: int | None = None  # format 3's draws from the rest (store/draws.py); None: DEFAULT_DRAWS
    image_size: int | None = None  # None: the recipe's
    seed: int = 0
    recipe: str = "seed"
    teacher_weights: str | None = None
    batch_size: int = 128  # views per teacher forward; even, so pairs stay whole
    workers: int = 2
    device: str = "cpu"
    amp: str = "auto"  # auto: fp16 (head in fp32) on CUDA, off on CPU
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    unit_size: int = 10240  # views per work unit (one writer, one commit)
    progress: bool = True
    # --dry-run: print the build's plan (teacher_pass/dry_run.py) and write nothing.
    dry_run: bool = False
    assume_rate: float | None = None  # views/s per rank for the dry run's hours; None: measured there
    world_size: int | None = None  # ranks the dry run plans for; None: $WORLD_SIZE or 1

    def __post_init__(self) -> None:
        if self.out is not None and self.cache is not None:
            raise UsageError("give --out or --cache, not both: --cache names an existing cache (a registry key)")
        if self.format not in ("zarr", "wds"):
            raise UsageError(f"--format must be zarr or wds, got {self.format!r}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {self.epochs}")
        if self.topk is not None and self.topk < 1:
            raise UsageError(f"--topk must be >= 1, got {self.topk}")
        if self.format_version not in (None, 1, 2, 3):
            raise UsageError(f"--format-version must be 1, 2 or 3, got {self.format_version}")
        if self.tail_classes is not None and self.draws is not None:
            raise UsageError("--tail-classes (format 2) and --draws (format 3) exclude each other; give one")
        if self.tail_classes is not None and self.format_version not in (None, 2):
            raise UsageError(
                f"--tail-classes needs --format-version 2 (format {self.format_version} stores no tail); add "
                "--format-version 2"
            )
        if self.draws is not None and self.format_version not in (None, 3):
            raise UsageError(
                f"--draws needs --format-version 3 (format {self.format_version} stores no draws); add "
                "--format-version 3"
            )
        if self.draws is not None and self.draws < 1:
            raise UsageError(f"--draws must be >= 1, got {self.draws}")
        if self.tail_classes is not None and self.tail_classes < 1:
            raise UsageError(f"--tail-classes must be >= 1, got {self.tail_classes}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise UsageError(f"--batch-size must be even (mixing pairs stay whole), got {self.batch_size}")
        if self.unit_size < 2 or self.unit_size % 2:
            raise UsageError(f"--unit-size must be even, got {self.unit_size}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise UsageError(f"--amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.assume_rate is not None and not self.assume_rate > 0:  # also catches NaN
            raise UsageError(f"--assume-rate must be > 0 views/s per rank, got {self.assume_rate}")
        if self.world_size is not None and self.world_size < 1:
            raise UsageError(f"--world-size must be >= 1, got {self.world_size}")
        if not self.dry_run and (self.assume_rate is not None or self.world_size is not None):
            # A real build takes its world from torchrun; silently ignoring these would mislead.
            given = "--assume-rate" if self.assume_rate is not None else "--world-size"
            raise UsageError(f"{given} plans a build without running it; add --dry-run")

    def resolved_epochs(self) -> int:
        """--epochs, or the recipe's training epochs when not given."""
        if self.epochs is not None:
            return self.epochs
        from kdcache.recipe import load_recipe

        return load_recipe(self.recipe).train.epochs

    def resolved(self) -> BuildConfig:
        """This config with every default that depends on the recipe filled in."""
        return self if self.epochs is not None else dataclasses.replace(self, epochs=self.resolved_epochs())

    def implied_format(self) -> int | None:
        """--format-version, or the one --tail-classes (2) or --draws (3) implies; None: the teacher decides."""
        if self.format_version is not None:
            return self.format_version
        return 2 if self.tail_classes is not None else 3 if self.draws is not None else None

    def for_classes(self, num_classes: int) -> BuildConfig:
        """This config with its label scheme settled for a teacher of ``num_classes`` classes.

        Without --format-version (or --tail-classes / --draws) and --topk, a teacher whose classes all fit in
        DEFAULT_TOPK stores every class exactly (format 1); a larger one stores format 3's exact top-k plus
        draws, which average to the teacher (docs/cache-format.md, docs/parity.md). A --topk alone keeps
        its meaning from before format 3 (format 1), so recorded build commands still build the same cache.
        """
        version = self.implied_format()
        if version is None:
            version = 3 if self.topk is None and num_classes > DEFAULT_TOPK else 1
        topk = self.topk
        if topk is None:
            topk = DEFAULT_DRAW_TOPK if version == 3 else min(DEFAULT_TOPK, num_classes)
        return dataclasses.replace(self, format_version=version, topk=topk)

    def tail(self) -> int:
        """Classes stored after the top-k: 0 unless format 2."""
        if self.implied_format() != 2:
            return 0
        return DEFAULT_TAIL_CLASSES if self.tail_classes is None else self.tail_classes

    def draws_per_view(self) -> int:
        """Draws from the rest of the distribution stored per view: 0 unless format 3."""
        if self.implied_format() != 3:
            return 0
        return DEFAULT_DRAWS if self.draws is None else self.draws

    def amp_dtype(self) -> torch.dtype | None:
        amp = self.amp
        if amp == "auto":
            # fp16 keeps 3 more mantissa bits than bf16: ~7e-4 L1 on the probabilities against ~5e-3
            # (benchmarks/teacher_precision.py); teacher logits are far from fp16's range limits.
            amp = "fp16" if self.device.startswith("cuda") else "off"
        return amp_dtype(amp)

    def precision(self, model: torch.nn.Module) -> str:
        """What the manifest records as teacher.precision for ``model`` under this config."""
        return precision_name(self.amp_dtype(), has_split_head(model))

    def use_channels_last(self) -> bool:
        return self.device.startswith("cuda") if self.channels_last is None else self.channels_last
