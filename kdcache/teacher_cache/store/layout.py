"""Names of the files and folders of a cache directory (shared by both backends)."""

from __future__ import annotations

import re

BUILD_HEADER = "build.json"  # written when a build starts; compared on every resume
MANIFEST = "manifest.json"  # written last, by finalize(); readers require it
_EPOCH_RE = re.compile(r"^e(\d{5,})$")
_UNIT_RE = re.compile(r"^u(\d{6,})\.(json|tar)$")


def epoch_name(epoch: int) -> str:
    return f"e{epoch:05d}"


def unit_name(unit: int) -> str:
    return f"u{unit:06d}"


def parse_epoch(name: str) -> int | None:
    m = _EPOCH_RE.match(name)
    return int(m.group(1)) if m else None


def parse_unit(name: str, suffix: str) -> int | None:
    """Unit index of a committed unit file ``uNNNNNN.<suffix>``; None for anything else (temp files)."""
    m = _UNIT_RE.match(name)
    return int(m.group(1)) if m and m.group(2) == suffix else None
