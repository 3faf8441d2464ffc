"""Small type checks for JSON documents: each failure is a ManifestError naming the field."""

from __future__ import annotations

from typing import Any

from kdcache.teacher_cache.store.errors import ManifestError


def _fail(name: str, expected: str, value: Any) -> ManifestError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ManifestError(f"manifest field {name!r}: expected {expected}, got {shown}")


def need_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    # bool is an int subclass in Python but never a valid count or id here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, "an integer", value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"{'-inf' if lo is None else lo}..{'inf' if hi is None else hi}"
        raise _fail(name, f"an integer in {rng}", value)
    return value


def need_str(name: str, value: Any, nonempty: bool = True) -> str:
    if not isinstance(value, str) or (nonempty and not value):
        raise _fail(name, "a non-empty string" if nonempty else "a string", value)
    return value


def need_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, "a number", value)
    return float(value)


def need_dict(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(name, "an object with string keys", value)
    return value


def need_list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise _fail(name, "a list", value)
    return list(value)


def need_keys(name: str, obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ManifestError(f"manifest field {name!r} is missing key(s): {', '.join(missing)}")
