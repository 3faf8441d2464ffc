"""The cache manifest: what a cache holds and how it was made, as validated, versioned JSON.

Field reference: docs/cache-format.md. The same document is stored twice: as the build header when a
build starts (``build.json``) and as the final manifest when it ends (``manifest.json``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from kdcache.teacher_cache.store.errors import ManifestError, UnsupportedFormatError
from kdcache.teacher_cache.store.schema import (
    need_dict,
    need_int,
    need_keys,
    need_list,
    need_number,
    need_str,
)

if TYPE_CHECKING:
    from kdcache.storage import Storage

FORMAT_VERSION = 3  # the newest version this code reads and writes; bump on any change a reader of the
# previous version would misread. 1: top-k labels. 2: top-k plus a 4-bit tail (store/labels.py).
# 3: an exact top-k plus systematic draws from the rest of the distribution (store/draws.py).
DEFAULT_FORMAT_VERSION = 1  # what a build writes unless told otherwise (docs/cache-format.md says why)


def format_version_for(tail_classes: int, draws: int = 0) -> int:
    """The format a cache storing these labels is: 3 with draws, 2 with a tail, else 1."""
    return 3 if draws else 2 if tail_classes else 1


BACKENDS = ("zarr", "wds")
TEACHER_KEYS = ("name", "weights_sha256", "mean", "std", "input_size", "interpolation", "num_classes")
# teacher.precision (kdcache.models.precision.precision_name); absent in caches older than it: unknown.
TEACHER_PRECISIONS = (
    "fp32",
    "fp16-autocast+fp32-head",
    "bf16-autocast+fp32-head",
    "fp16-autocast",
    "bf16-autocast",
)
DATASET_KEYS = ("fingerprint", "num_samples")
LIBRARIES = ("torch", "torchvision", "timm", "pillow", "numpy", "zarr")
# Where the images and the teacher's weights file are: not content, may change between resumes.
LOCATION_KEYS = (("dataset", "source"), ("teacher", "weights"))
# A resumed or extended build may change these; every other field must match the stored header.
RESUMABLE_FIELDS = frozenset({"epochs_planned", "epochs_complete", "created"})
# Bookkeeping, not content: two caches with equal content but different values here have equal digests.
NON_CONTENT_FIELDS = frozenset(
    {"format_version", "kdcache_version", "backend", "epochs_planned", "epochs_complete", "created", "library_versions"}
)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    format_version: int = DEFAULT_FORMAT_VERSION
    kdcache_version: str
    backend: str
    teacher: dict[str, Any]
    recipe: dict[str, Any]
    seed: int
    repeats: int
    image_size: int
    topk: int
    num_classes: int
    class_names: tuple[str, ...]
    dataset: dict[str, Any]
    epochs_planned: int
    num_slots: int
    unit_size: int
    record_width: int
    created: str
    library_versions: dict[str, str] = field(default_factory=dict)
    epochs_complete: tuple[int, ...] = ()  # summary written by finalize; unit markers are the truth
    tail_classes: int = 0  # format 2: classes ranked k+1 .. k+tail_classes stored with 4-bit log-probs
    draws: int = 0  # format 3: systematic draws from the teacher's distribution outside the top-k

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def label_width(self) -> int:
        """Classes per view with a stored probability: the width of a view's rows in memory."""
        return self.topk + self.tail_classes + self.draws

    @property
    def ranked(self) -> int:
        """Leading columns of a row that hold distinct classes by descending probability (top-k + tail)."""
        return self.topk + self.tail_classes

    @property
    def label_scheme(self) -> str:
        """'top-10', 'top-10 + 10 tail' (format 2) or 'top-5 + 32 draws' (format 3): how the soft labels
        are stored, for people."""
        if self.draws:
            return f"top-{self.topk} + {self.draws} draws"
        return f"top-{self.topk}" + (f" + {self.tail_classes} tail" if self.tail_classes else "")

    def label_flags(self) -> list[str]:
        """The ``kdcache build`` options that store labels this way."""
        if self.draws:
            return ["--topk", str(self.topk), "--format-version", "3", "--draws", str(self.draws)]
        tail = ["--format-version", str(self.format_version), "--tail-classes", str(self.tail_classes)]
        return ["--topk", str(self.topk), *(tail if self.tail_classes else [])]

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        if not self.tail_classes:  # version 1 documents stay as they were (same bytes, same content hash)
            del out["tail_classes"]
        if not self.draws:  # so do version 1 and 2 documents
            del out["draws"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; any malformed input raises ManifestError naming the problem."""
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
            raise ManifestError(f"manifest is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
        if "format_version" not in data:
            raise ManifestError("manifest field 'format_version' is missing")
        version = need_int("format_version", data["format_version"], lo=1)
        if version > FORMAT_VERSION:
            # Checked before anything else: a newer format may rename or add fields.
            raise UnsupportedFormatError(
                f"cache format version {version} is newer than this kdcache supports ({FORMAT_VERSION}); "
                f"upgrade kdcache (pip install -U kdcache) to read it"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in data if k not in names)
        if unknown:
            raise ManifestError(f"manifest has unknown field(s) {', '.join(map(repr, unknown))}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        ]
        if missing:
            raise ManifestError(f"manifest field(s) missing: {', '.join(map(repr, missing))}")
        kwargs = dict(data)
        for name in ("class_names", "epochs_complete"):
            if name in kwargs:
                kwargs[name] = tuple(need_list(name, kwargs[name]))
        return cls(**kwargs)

    # ---- comparisons --------------------------------------------------------------------------
    def content_dict(self) -> dict[str, Any]:
        """The fields that define the cache's content (what the content digest covers). Where the images
        and the weights file lie is not content: their fingerprint and sha256 are."""
        out = {k: v for k, v in self.to_dict().items() if k not in NON_CONTENT_FIELDS}
        for field_name, key in LOCATION_KEYS:
            if isinstance(out.get(field_name), dict):
                out[field_name] = {k: v for k, v in out[field_name].items() if k != key}
        return out

    def differences(self, other: Manifest, ignore: frozenset[str] = RESUMABLE_FIELDS) -> list[str]:
        """Dotted names of the fields (one level into dicts) that differ, excluding ``ignore``."""
        a, b = self.to_dict(), other.to_dict()
        out: list[str] = []
        locations = {f"{f}.{k}" for f, k in LOCATION_KEYS}  # data or weights moved: fingerprints decide
        # Both sides' keys: a version 1 document has no 'tail_classes' (to_dict omits it), a version 2 one does.
        for k in [*a, *(k for k in b if k not in a)]:
            if k in ignore or a.get(k) == b.get(k):
                continue
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out.extend(
                    f"{k}.{s}"
                    for s in sorted(set(a[k]) | set(b[k]))
                    if a[k].get(s) != b[k].get(s) and f"{k}.{s}" not in locations
                )
            else:
                out.append(k)
        return out

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)


def current_library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose behaviour shapes the views and the teacher outputs."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a manifest")


def _plain_json(name: str, value: Any) -> Any:
    """A deep copy in plain JSON types (tuples become lists), so equality is JSON equality."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise ManifestError(f"manifest field {name!r} is not plain JSON: {e}") from None


def _set(m: Manifest, name: str, value: Any) -> None:
    object.__setattr__(m, name, value)  # normalising a frozen instance during construction


def _need_precision(value: Any) -> None:
    if need_str("teacher.precision", value) not in TEACHER_PRECISIONS:
        raise ManifestError(
            f"manifest field 'teacher.precision': expected one of {', '.join(TEACHER_PRECISIONS)}, got {value!r}"
        )


def _validate(m: Manifest) -> None:
    need_int("format_version", m.format_version, lo=1, hi=FORMAT_VERSION)
    need_str("kdcache_version", m.kdcache_version)
    if m.backend not in BACKENDS:
        raise ManifestError(f"manifest field 'backend': expected one of {', '.join(BACKENDS)}, got {m.backend!r}")
    need_int("seed", m.seed, lo=0, hi=2**63 - 1)
    need_int("repeats", m.repeats, lo=1, hi=255)
    need_int("image_size", m.image_size, lo=1, hi=65535)
    num_classes = need_int("num_classes", m.num_classes, lo=2, hi=2**31 - 1)
    need_int("topk", m.topk, lo=1, hi=num_classes)
    tail = need_int("tail_classes", m.tail_classes, lo=0, hi=num_classes - m.topk)
    draws = need_int("draws", m.draws, lo=0, hi=65535)
    if (m.format_version == 2) != (tail > 0) or (m.format_version == 3) != (draws > 0):
        raise ManifestError(
            f"manifest fields 'format_version' {m.format_version}, 'tail_classes' {tail} and 'draws' {draws} "
            "disagree: format 1 stores only the top-k, format 2 a tail of at least 1 class, format 3 at least 1 draw"
        )
    if draws and m.topk >= num_classes:
        raise ManifestError(
            f"manifest field 'draws': format 3 draws from classes outside the top-{m.topk}, "
            f"and there are none of {num_classes}"
        )
    need_int("epochs_planned", m.epochs_planned, lo=1)
    need_int("record_width", m.record_width, lo=1, hi=4096)
    unit_size = need_int("unit_size", m.unit_size, lo=2)
    if unit_size % 2:
        raise ManifestError(
            f"manifest field 'unit_size': must be even (mixing pairs never straddle units), got {unit_size}"
        )

    teacher = need_dict("teacher", _plain_json("teacher", m.teacher))
    need_keys("teacher", teacher, TEACHER_KEYS)
    need_str("teacher.name", teacher["name"])
    need_str("teacher.weights_sha256", teacher["weights_sha256"])
    for key in ("mean", "std"):
        for i, v in enumerate(need_list(f"teacher.{key}", teacher[key])):
            need_number(f"teacher.{key}[{i}]", v)
    size = teacher["input_size"]
    for i, v in enumerate(size if isinstance(size, list) else [size]):
        need_int(f"teacher.input_size[{i}]" if isinstance(size, list) else "teacher.input_size", v, lo=1)
    need_str("teacher.interpolation", teacher["interpolation"])
    if "precision" in teacher:  # optional: caches written before it was recorded lack it (unknown)
        _need_precision(teacher["precision"])
    if need_int("teacher.num_classes", teacher["num_classes"], lo=2) != num_classes:
        raise ManifestError(
            f"manifest field 'teacher.num_classes' ({teacher['num_classes']}) differs from "
            f"'num_classes' ({num_classes})"
        )
    _set(m, "teacher", teacher)

    _set(m, "recipe", need_dict("recipe", _plain_json("recipe", m.recipe)))

    dataset = need_dict("dataset", _plain_json("dataset", m.dataset))
    need_keys("dataset", dataset, DATASET_KEYS)
    need_str("dataset.fingerprint", dataset["fingerprint"])
    num_samples = need_int("dataset.num_samples", dataset["num_samples"], lo=2, hi=2**31 - 1)
    if "kind" in dataset:
        need_str("dataset.kind", dataset["kind"])
    if dataset.get("source") is not None:
        need_str("dataset.source", dataset["source"])
    _set(m, "dataset", dataset)
    expected_slots = num_samples - num_samples % 2
    if need_int("num_slots", m.num_slots, lo=2) != expected_slots:
        raise ManifestError(
            f"manifest field 'num_slots': expected {expected_slots} (dataset.num_samples rounded down to even), "
            f"got {m.num_slots}"
        )

    names = need_list("class_names", m.class_names)
    for i, n in enumerate(names):
        need_str(f"class_names[{i}]", n)
    if len(names) != num_classes:
        raise ManifestError(f"manifest field 'class_names': has {len(names)} names for {num_classes} classes")
    _set(m, "class_names", tuple(names))

    created = need_str("created", m.created)
    try:
        _dt.datetime.fromisoformat(created)
    except ValueError:
        raise ManifestError(f"manifest field 'created': expected an ISO 8601 time, got {created!r}") from None

    libs = need_dict("library_versions", _plain_json("library_versions", m.library_versions))
    for k, v in libs.items():
        need_str(f"library_versions.{k}", v)
    _set(m, "library_versions", libs)

    listed = need_list("epochs_complete", m.epochs_complete)
    done = [need_int(f"epochs_complete[{i}]", e, lo=0) for i, e in enumerate(listed)]
    if done != sorted(set(done)) or (done and done[-1] >= m.epochs_planned):
        raise ManifestError(
            f"manifest field 'epochs_complete': expected distinct ascending epochs below epochs_planned "
            f"({m.epochs_planned}), got {done}"
        )
    _set(m, "epochs_complete", tuple(done))


def read_manifest(storage: Storage, key: str) -> Manifest | None:
    """The manifest stored under ``key`` of a cache's storage; None if there is none. Errors name it."""
    try:
        text = storage.read(key)
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(text)
    except ManifestError as e:
        raise type(e)(f"{storage.where(key)}: {e}") from None
