"""`kdcache --help` and `--version` import no command, so neither torch nor timm; the command list they
print is each command's own summary."""

from __future__ import annotations

import inspect
import subprocess
import sys

import click

from kdcache.cli.main import COMMANDS, SUMMARIES, cli


def _imported_modules(*args: str) -> set[str]:
    """Top-level modules `python -X importtime -m kdcache ARGS` imports (from its import-time report)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kdcache", *args], capture_output=True, text=True, check=True
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "kdcache" in names and "click" in names  # the report was read
    return names


def test_top_level_help_and_version_import_neither_torch_nor_timm():
    for args in (("--help",), ("--version",)):
        heavy = _imported_modules(*args) & {"torch", "timm", "numpy", "zarr"}
        assert not heavy, f"kdcache {' '.join(args)} imports {sorted(heavy)}"


def test_the_listed_summaries_are_the_commands_own():
    ctx = click.Context(cli)
    assert set(SUMMARIES) == set(COMMANDS)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        first = " ".join(inspect.cleandoc(cmd.help or "").split("\n\n")[0].split())
        assert SUMMARIES[name] == first, name
    text = subprocess.run(
        [sys.executable, "-m", "kdcache", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(name in text for name in COMMANDS) and "Commands:" in text
