"""Every benchmark starts: each script's --help exits 0 with its usage, each shell script parses, and no
file under benchmarks/ reaches for sys.path (shared code lives in kdcache.testing).

Scripts are found by glob, so a new one is covered without touching this file. They run in this
process (runpy), so torch is imported once for all of them rather than once per script.
"""

from __future__ import annotations

import contextlib
import io
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GROUPS = {"performance", "studies", "stress"}
SCRIPTS = sorted(BENCHMARKS.glob("**/*.py"))
SHELL_SCRIPTS = sorted(BENCHMARKS.glob("**/*.sh"))


def _rel(path: Path) -> str:
    return path.relative_to(BENCHMARKS).as_posix()


def test_the_globs_find_every_group() -> None:
    """A glob that found nothing would leave the tests below with nothing to check."""
    groups = {p.relative_to(BENCHMARKS).parts[0] for p in SCRIPTS}
    assert groups == GROUPS, f"benchmark groups found: {sorted(groups)}"
    misplaced = [_rel(p) for p in SCRIPTS + SHELL_SCRIPTS if len(p.relative_to(BENCHMARKS).parts) != 2]
    assert not misplaced, f"scripts outside benchmarks/<group>/: {misplaced}"
    assert SHELL_SCRIPTS, "no shell script under benchmarks/ (gpu.sh expected)"


@pytest.mark.parametrize("script", SCRIPTS, ids=_rel)
def test_help_exits_0_with_usage(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    out = io.StringIO()
    # Imported under another name first: nothing may run (or parse --help) unless run as __main__.
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="benchmark_import_check")
    assert out.getvalue() == "", f"{_rel(script)} printed when imported, not run"
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code in (0, None), f"{_rel(script)} --help exited {exit_info.value.code}"
    assert out.getvalue().startswith(f"usage: {script.name}"), out.getvalue()[:200]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=_rel)
def test_shell_script_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_file_under_benchmarks_touches_sys_path() -> None:
    files = [p for p in BENCHMARKS.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    offenders = [_rel(p) for p in files if "sys.path" in p.read_text(errors="replace")]
    assert not offenders, f"import shared code from kdcache.testing instead of editing sys.path: {offenders}"


def test_the_readme_lists_every_script() -> None:
    readme = (BENCHMARKS / "README.md").read_text()
    missing = [_rel(p) for p in SCRIPTS + SHELL_SCRIPTS if f"benchmarks/{_rel(p)}" not in readme]
    assert not missing, f"benchmarks/README.md does not mention: {missing}"
