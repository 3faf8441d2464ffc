"""Which teachers' soft labels a cached run trains on: ``--teacher T1``, ``T1,T2`` or ``T1:0.7,T2:0.3``
among the layers of one cache (kdcache/teacher_cache/store/layers.py).

The cache's own store is its first layer; every further teacher is a complete store at
``CACHE/layers/<id>/`` with the same views. A selection is a list of (layer reader, weight); the
training target is the weighted mean of the layers' reconstructed distributions (probability space).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdcache.errors import UsageError
from kdcache.teacher_cache.store import open_layers
from kdcache.teacher_cache.store.layers import (
    parse_teacher_spec,
    teacher_label,
    view_differences,
)

FIRST_LAYER = "."  # the cache's own store, in records of the selection


@dataclass(frozen=True)
class TeacherLayer:
    """One teacher of a cache: its name (as typed at build time), its layer id (``.`` for the cache's own
    store), its reader and its weight in the selection (1.0 until selected)."""

    name: str
    layer: str
    reader: Any  # CacheReader
    weight: float = 1.0

    @property
    def teacher(self) -> dict[str, Any]:
        return dict(self.reader.manifest.teacher)

    def record(self) -> dict[str, Any]:
        """What config.yaml and TensorBoard say about this teacher."""
        t = self.reader.manifest.teacher
        return {
            "name": self.name,
            "weight": self.weight,
            "layer": self.layer,
            "model": t.get("model"),
            "weights_sha256": t.get("weights_sha256"),
            "topk": self.reader.manifest.topk,
            "tail_classes": self.reader.manifest.tail_classes,
            "draws": self.reader.manifest.draws,
        }

    def describe(self) -> str:
        where = "the cache's own" if self.layer == FIRST_LAYER else f"layers/{self.layer}"
        return f"{self.name} (weight {self.weight:.3g}, {where}, {self.reader.manifest.label_scheme})"


def first_teacher(reader) -> TeacherLayer:
    """The teacher the cache was built with (its own store)."""
    return TeacherLayer(teacher_label(reader.manifest.teacher), FIRST_LAYER, reader)


def cache_teachers(reader) -> list[TeacherLayer]:
    """Every teacher of the cache ``reader`` opened: its own first, then its layers by id. A layer whose
    views differ from the cache's (it cannot be one) is refused rather than trained on."""
    out = [first_teacher(reader)]
    for lid, layer in open_layers(reader.storage)[1:]:  # [0] is the cache's own store, opened as ``reader``
        diff = view_differences(reader.manifest, layer.manifest)
        if diff:
            raise UsageError(
                f"layer {lid} of {reader.root} describes other views than the cache ({', '.join(diff[:5])}); "
                f"remove it (kdcache rm) and add the teacher again with `kdcache build --teacher T --out CACHE`"
            )
        out.append(TeacherLayer(teacher_label(layer.manifest.teacher), str(lid), layer))
    return out


def _find(name: str, teachers: list[TeacherLayer]) -> TeacherLayer | None:
    """By layer id, else by the name typed at build time, else by the timm model it resolves to. Two
    layers answering to one name (one architecture, two weights) are an error naming their ids."""
    by_id = [t for t in teachers if t.layer == name]
    if by_id:
        return by_id[0]
    exact = [t for t in teachers if t.name == name]
    if not exact:
        from kdcache.models.teacher import TeacherError, resolve_name

        try:
            model = resolve_name(name)
        except TeacherError:
            return None
        exact = [t for t in teachers if t.teacher.get("model") == model]
    if len(exact) > 1:
        ids = ", ".join(t.layer for t in exact)
        raise UsageError(
            f"--teacher {name!r} matches {len(exact)} layers of the cache; name one by its layer id: {ids}"
        )
    return exact[0] if exact else None


def select_teachers(reader, spec: str | None) -> tuple[TeacherLayer, ...]:
    """The layers a spec names, with normalised weights. No spec: the cache's own teacher alone."""
    if spec is None:
        return (first_teacher(reader),)
    teachers = cache_teachers(reader)
    known = ", ".join(t.name for t in teachers)
    exact = _find(spec.strip(), teachers) if "," not in spec else None
    if exact is not None:  # a whole name, even one with a ':' (hf-hub:...)
        return (exact,)
    try:
        chosen = parse_teacher_spec(spec)
    except ValueError as e:
        raise UsageError(f"{e}; this cache's teachers: {known}") from None
    out = []
    for name, weight in chosen:
        t = _find(name, teachers)
        if t is None:
            raise UsageError(
                f"--teacher {spec!r}: this cache has no teacher {name!r}; its teachers: {known}. "
                f"Add one with `kdcache build --teacher {name} --out {reader.storage.absolute()}` "
                "(and the data and recipe the cache was built with)"
            )
        out.append(TeacherLayer(t.name, t.layer, t.reader, weight))
    if len({t.layer for t in out}) != len(out):
        raise UsageError(f"--teacher {spec!r} names one teacher twice; its teachers: {known}")
    return tuple(out)


@dataclass(frozen=True)
class TeacherChoice:
    """The soft labels a run trains on: the selected teachers, and whether the run names them (a teacher
    was asked for, or the cache has layers); a run that does not reads the cache's own rows, as before
    layers existed."""

    teachers: tuple[TeacherLayer, ...]
    named: bool

    def source_layers(self) -> list[tuple[Any, float]] | None:
        """What :class:`~kdcache.student.cache_source.CacheBatchSource` takes as ``teachers``."""
        return [(t.reader, t.weight) for t in self.teachers] if self.named else None


def choose_teachers(reader, spec: str | None, cached: bool = True) -> TeacherChoice:
    """:func:`select_teachers` for a run; ``cached=False`` (online, none): the cache's own teacher, unnamed."""
    from kdcache.teacher_cache.store.layers import layer_ids

    teachers = select_teachers(reader, spec if cached else None)
    return TeacherChoice(teachers, cached and (spec is not None or bool(layer_ids(reader.storage))))


def common_epochs(reader, layer_readers) -> list[int]:
    """Epochs complete in the cache and in every chosen layer's reader (a layer still being built has
    fewer): what a run trains on, and what its start lines report."""
    done = set(reader.epochs_complete)
    for r in layer_readers:
        done &= set(r.epochs_complete)
    return sorted(done)
