"""A cache as Python sees it: open one by path, URL or registry key, inspect it, and load its batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcache.api.loader import CacheLoader
from kdcache.recipe import Recipe
from kdcache.student.args import TrainArgs, resolve_recipe
from kdcache.student.teachers import cache_teachers
from kdcache.teacher_cache.store import CacheReader, Manifest

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Cache:
    """A finished teacher cache, opened for reading. Get one from :func:`open_cache`.

    ``data`` is where the training images are, when they moved since the build (``kdcache train --data``).
    """

    reader: CacheReader
    data: str | None = None

    @property
    def path(self) -> str:
        """The cache's location: a local path or a URL."""
        return str(self.reader.storage.absolute())

    @property
    def manifest(self) -> Manifest:
        """The cache's manifest (docs/cache-format.md): teacher, recipe, seed, label scheme, dataset."""
        return self.reader.manifest

    @property
    def num_classes(self) -> int:
        """The teacher's number of classes: the width of every target and of the student's head."""
        return int(self.manifest.num_classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in the teacher's order (its output index = the label index batches carry)."""
        return tuple(self.manifest.class_names)

    @property
    def epochs(self) -> list[int]:
        """The cached epochs that are complete, ascending."""
        return list(self.reader.epochs_complete)

    @property
    def views_per_epoch(self) -> int:
        """Views (slots) of one cached epoch."""
        return int(self.manifest.num_slots)

    @property
    def image_size(self) -> int:
        """The views' side in pixels (square, uint8 RGB)."""
        return int(self.manifest.image_size)

    @property
    def teachers(self) -> list[str]:
        """The teachers whose soft labels the cache holds: its own first, then its layers (the names
        ``teacher=`` of :meth:`loader` takes)."""
        return [t.name for t in cache_teachers(self.reader)]

    def info(self) -> dict[str, Any]:
        """A summary: where, what teacher(s) and labels, how many views and epochs."""
        m = self.manifest
        return {
            "path": self.path,
            "backend": m.backend,
            "format_version": m.format_version,
            "teachers": self.teachers,
            "labels": m.label_scheme,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "views_per_epoch": self.views_per_epoch,
            "epochs_complete": self.epochs,
            "seed": m.seed,
            "repeats": m.repeats,
            "recipe": m.recipe.get("name"),
        }

    def recipe(
        self,
        config: str | None = None,
        *,
        student: str | None = None,
        epochs: int | None = None,
        global_batch: int | None = None,
        lr: float | None = None,
    ) -> Recipe:
        """The recipe a run on this cache uses, resolved exactly as ``kdcache train`` resolves it: the
        augmentation is the cache's (replay needs it), the training part comes from ``config`` (a preset
        name or YAML file; None: the cache's) with these overrides (``global_batch``: train's
        ``--batch-size``)."""
        args = TrainArgs(
            student=student, cache=self.path, out="", config=config, epochs=epochs, batch_size=global_batch, lr=lr
        )
        return resolve_recipe(args, self.manifest.recipe)

    def loader(
        self,
        epoch: int,
        global_batch: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        teacher: str | None = None,
        workers: int = 2,
        pin_memory: bool = False,
        device: str = "cpu",
        normalize_for: nn.Module | None = None,
        allow_epoch_reuse: bool = False,
    ) -> CacheLoader:
        """This process's batches of student epoch ``epoch``, exactly as ``kdcache train`` sees them.

        ``global_batch`` is the batch over all processes, as train's ``--batch-size``; this process gets
        ``global_batch / world_size`` views a step. ``rank`` and ``world_size`` default to
        torch.distributed's (0 and 1 without a process group). ``teacher``: the soft labels to use, as
        train's ``--teacher`` (``"T1"``, ``"T1,T2"``, ``"T1:0.7,T2:0.3"``; None: the cache's own).
        ``normalize_for``: a model whose mean/std normalise the images (float NCHW); None: uint8 NHWC.
        Epochs past the cached ones cycle through them (a fresh pair order each pass) only with
        ``allow_epoch_reuse``. Every rendered view's digest is checked against the stored one.
        """
        return CacheLoader(
            self,
            epoch,
            global_batch,
            rank=rank,
            world_size=world_size,
            teacher=teacher,
            workers=workers,
            pin_memory=pin_memory,
            device=device,
            normalize_for=normalize_for,
            allow_epoch_reuse=allow_epoch_reuse,
        )


def open_cache(cache: str | Path, *, data: str | None = None, cache_root: str | None = None) -> Cache:
    """Open a finished cache: a directory, an fsspec URL (``s3://...``) or a registry key (prefix) under
    ``cache_root`` (default ``$KDCACHE_HOME`` or the user's cache directory). ``data``: where the images
    are, if not where the cache was built from. Raises :class:`kdcache.teacher_cache.store.CacheError`
    (a clear message) for anything that is not a finished cache."""
    from kdcache.registry.lookup import resolve_cache_arg
    from kdcache.teacher_cache.store import open_cache as open_reader

    return Cache(open_reader(resolve_cache_arg(str(cache), finished=True, root=cache_root)), data)
