"""No folder of the package is one that standard tooling treats as output and hides.

GitHub's Python .gitignore (and many global ignore files) ignore unanchored ``build/``, ``dist/``,
``lib/`` ... folders at any depth: a package folder with such a name is skipped by ``git add .``, never
shows in ``git status`` and is skipped by linters that honour .gitignore. Here a copy of the package,
with those patterns as its .gitignore, must have every source file added by ``git add -A``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The folder and file patterns of GitHub's standard Python .gitignore that can match inside a package.
PYTHON_GITIGNORE = """
__pycache__/
*.py[cod]
.Python
build/
develop-eggs/
dist/
downloads/
eggs/
.eggs/
lib/
lib64/
parts/
sdist/
var/
wheels/
share/python-wheels/
*.egg-info/
*.egg
*.manifest
*.spec
htmlcov/
.tox/
.nox/
.cache
cover/
*.log
instance/
docs/_build/
.pybuilder/
target/
__pypackages__/
.env
.venv
env/
venv/
ENV/
site/
"""


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_git_add_with_the_standard_python_gitignore_adds_every_package_file(tmp_path):
    sources = sorted(
        p.relative_to(REPO).as_posix()
        for p in (REPO / "kdcache").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".typed")
    )
    assert len(sources) > 50  # the package, not an empty glob
    repo = tmp_path / "clone"
    for rel in sources:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, repo / rel)
    (repo / ".gitignore").write_text(PYTHON_GITIGNORE)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    added = set(_git(repo, "ls-files").split())
    hidden = [rel for rel in sources if rel not in added]
    assert not hidden, f"hidden by a standard .gitignore: {hidden[:10]}"
