"""The public Python API: exactly the names in ``kdcache.__all__``, with pinned signatures.

A change to a name or a signature here is a deliberate change: update SURFACE, docs/python-api.md and
CHANGELOG.md together. ``import kdcache`` stays light: torch loads only when an API name is used.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import kdcache

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"

SURFACE = """\
kdcache.Batch(images: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, target: TeacherTarget, slots: torch.Tensor) -> None
kdcache.Batch.__len__(self) -> int
kdcache.Batch.to(self, device: torch.device | str, non_blocking: bool = False) -> Batch
kdcache.Cache(reader: CacheReader, data: str | None = None) -> None
kdcache.Cache.class_names
kdcache.Cache.epochs
kdcache.Cache.image_size
kdcache.Cache.info(self) -> dict[str, Any]
kdcache.Cache.loader(self, epoch: int, global_batch: int, *, rank: int | None = None, world_size: int | None = None, teacher: str | None = None, workers: int = 2, pin_memory: bool = False, device: str = cpu, normalize_for: nn.Module | None = None, allow_epoch_reuse: bool = False) -> CacheLoader
kdcache.Cache.manifest
kdcache.Cache.num_classes
kdcache.Cache.path
kdcache.Cache.recipe(self, config: str | None = None, *, student: str | None = None, epochs: int | None = None, global_batch: int | None = None, lr: float | None = None) -> Recipe
kdcache.Cache.teachers
kdcache.Cache.views_per_epoch
kdcache.CacheLoader(cache: CacheLike, epoch: int, global_batch: int, *, rank: int | None = None, world_size: int | None = None, teacher: str | None = None, workers: int = 2, pin_memory: bool = False, device: str = cpu, normalize_for: nn.Module | None = None, allow_epoch_reuse: bool = False)
kdcache.CacheLoader.__iter__(self) -> Iterator[Batch]
kdcache.CacheLoader.__len__(self) -> int
kdcache.KDLoss(num_classes: int, kd_weight: float = 0.8, ce_weight: float = 0.2, temperature: float = 1.0, label_smoothing: float = 0.1)
kdcache.KDLoss.forward(self, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, teacher: TeacherTarget | None = None) -> LossParts
kdcache.KDLoss.from_config(cfg: TrainConfig, num_classes: int) -> KDLoss
kdcache.LossParts(total: torch.Tensor, ce: torch.Tensor, kd: torch.Tensor | None = None) -> None
kdcache.LossParts.detached(self) -> dict[str, torch.Tensor]
kdcache.TeacherTarget(log_probs: torch.Tensor) -> None
kdcache.TeacherTarget.from_cached(topk_logprob: torch.Tensor, topk_class: torch.Tensor, num_classes: int, layers: tuple[tuple[int, float], ...] | None = None) -> TeacherTarget
kdcache.TeacherTarget.from_logits(logits: torch.Tensor) -> TeacherTarget
kdcache.TeacherTarget.from_topk(topk_logprob: torch.Tensor, topk_class: torch.Tensor, num_classes: int) -> TeacherTarget
kdcache.TeacherTarget.from_topk_mixture(topk_logprob: torch.Tensor, topk_class: torch.Tensor, num_classes: int, layers: tuple[tuple[int, float], ...]) -> TeacherTarget
kdcache.TeacherTarget.log_probs_at(self, temperature: float) -> torch.Tensor
kdcache.TeacherTarget.num_classes
kdcache.TeacherTarget.probs
kdcache.create_optimizer(model: nn.Module, recipe: Recipe | TrainConfig) -> torch.optim.Optimizer
kdcache.create_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe | TrainConfig, steps_per_epoch: int) -> Scheduler
kdcache.create_student(recipe: Recipe | TrainConfig, num_classes: int) -> nn.Module
kdcache.normalizer(model: nn.Module) -> Normalize
kdcache.open_cache(cache: str | Path, *, data: str | None = None, cache_root: str | None = None) -> Cache
"""

PUBLIC_DUNDERS = ("__iter__", "__len__")


def surface() -> list[str]:
    """One line per public name, method and property: ``kdcache.NAME(signature)``."""

    def sig(f) -> str:
        return str(inspect.signature(f)).replace("'", "")

    out = []
    for name in sorted(n for n in kdcache.__all__ if n != "__version__"):
        obj = getattr(kdcache, name)
        if not inspect.isclass(obj):
            out.append(f"kdcache.{name}{sig(obj)}")
            continue
        out.append(f"kdcache.{name}{sig(obj)}")
        for attr, value in sorted(vars(obj).items()):
            if attr.startswith("_") and attr not in PUBLIC_DUNDERS:
                continue
            if isinstance(value, property):
                out.append(f"kdcache.{name}.{attr}")
            elif callable(value) or isinstance(value, classmethod | staticmethod):
                out.append(f"kdcache.{name}.{attr}{sig(getattr(obj, attr))}")
    return out


def test_all_names_exactly_the_public_surface_with_its_signatures():
    assert "open_cache" in kdcache.__all__ and "__version__" in kdcache.__all__
    assert all(hasattr(kdcache, n) for n in kdcache.__all__)
    assert surface() == SURFACE.splitlines()


def test_every_public_name_has_type_hints_and_a_docstring():
    for name in kdcache.__all__:
        if name == "__version__":
            continue
        obj = getattr(kdcache, name)
        assert inspect.getdoc(obj), f"kdcache.{name} has no docstring"
        members = [obj] if not inspect.isclass(obj) else [v for k, v in vars(obj).items() if not k.startswith("_")]
        for m in members:
            f = m.fget if isinstance(m, property) else getattr(m, "__func__", m)
            if callable(f) and not inspect.isclass(f):
                hints = inspect.signature(f).return_annotation
                assert hints is not inspect.Signature.empty or f.__name__ == "__init__", f"{name}.{f.__name__}"


def test_the_reference_in_docs_lists_every_signature():
    text = DOC.read_text()
    missing = [line for line in surface() if f"`{line}`" not in text]
    assert not missing, f"docs/python-api.md lacks: {missing}"


def test_the_package_ships_type_information():
    assert (Path(kdcache.__file__).parent / "py.typed").is_file()


def test_import_kdcache_loads_neither_torch_nor_timm():
    code = "import sys, kdcache; print(kdcache.__version__); print([m for m in ('torch', 'timm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1] == "[]", out
