"""Shared CLI helpers: turning library errors into clear click errors, option parsing."""

from __future__ import annotations

import click


def parse_slots(text: str) -> tuple[int, int]:
    """'A:B' -> (A, B), half-open like Python slices."""
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError as e:
        raise click.BadParameter(f"expected A:B with integers A < B, got {text!r}") from e
    if a < 0 or b <= a:
        raise click.BadParameter(f"expected 0 <= A < B, got {text!r}")
    return a, b
