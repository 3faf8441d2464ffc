"""The layering contract in pyproject.toml is enforced by import-linter, and it can fail.

`make lint` runs `lint-imports` on the real tree; here a copy of the package gets one upward import
(storage importing the student) and the same contract, run on the copy, must reject it by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy shadows the editable install
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "kdcache", root / "kdcache", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_the_contract_and_an_upward_import_breaks_it(tmp_path):
    root = _copy(tmp_path)
    kept = _lint(root)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "1 kept, 0 broken" in kept.stdout

    base = root / "kdcache" / "storage" / "base.py"
    base.write_text(base.read_text() + "\nimport kdcache.student.run  # an upward import\n")
    broken = _lint(root)
    assert broken.returncode != 0
    assert "kdcache.storage is not allowed to import kdcache.student" in broken.stdout
