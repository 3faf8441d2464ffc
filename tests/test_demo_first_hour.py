"""`make demo` as a new user meets it: it installs only what the demo needs, every block of its output
names its run, it draws a picture (training curves and captioned views), and docs/parity.md's tables
have the columns the demo prints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
from build_helpers import REPO, run_cli

from kdcache.demo.run import DemoSummary, StudentRow, format_table, parity_markdown


def _make_n(target: str) -> str:
    """The commands `make TARGET` runs from scratch (-B: as if nothing were installed yet), without running them."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_make_demo_installs_the_demo_extra_and_make_test_the_dev_extra():
    demo, test = _make_n("demo"), _make_n("test")
    assert "-e '.[demo]'" in demo and ".[dev]" not in demo and "kdcache demo --out demo-out" in demo
    assert "-e '.[dev]'" in test and "pytest" in test
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[]", d)[0] for d in extras["demo"]}
    assert names == {"scikit-learn", "matplotlib"}  # the digits and the picture; no test or cloud packages


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    r = run_cli("demo", "--quick", "--out", str(out), "--workers", "0", "--no-progress")
    return out, r


def test_every_block_names_its_run(quick_demo):
    out, r = quick_demo
    blocks: dict[str, list[str]] = {}
    heading = ""
    for line in r.stderr.splitlines():
        if re.match(r"^\[\d+/\d+\] ", line):
            heading = line
            blocks[heading] = []
        elif heading:
            blocks[heading].append(line)
    students = [h for h in blocks if "kdcache train" in h]
    assert len(students) == 5
    for h in students:
        body = blocks[h]
        kd = re.search(r"--kd (\w+)", h).group(1)
        assert any(re.match(r"^      epoch 1/1: loss \d", ln) for ln in body), body  # the epoch line, indented
        result = [ln for ln in body if "top-1 model" in ln]
        assert len(result) == 1 and f"--kd {kd}" in result[0] and str(out / "runs" / "seed0") in result[0]
    assert "picture:" in r.stdout and "summary.md" in r.stdout


def test_the_demo_draws_its_picture(quick_demo):
    pytest.importorskip("matplotlib")
    from PIL import Image

    out, _ = quick_demo
    png = out / "demo.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 400
    assert png.stat().st_size < 200_000  # small enough to commit as docs/demo.png
    assert json.loads((out / "summary.json").read_text())["picture"] == str(png)


def test_the_figure_reads_each_runs_curves(quick_demo):
    from kdcache.demo.figure import curves, preview_views

    out, _ = quick_demo
    c = curves(out / "runs" / "seed0" / "test_resnet-cached")
    assert c["epoch"] == [1] and 0 <= c["top1"][0] <= 100 and c["val_loss"][0] > 0
    s = json.loads((out / "summary.json").read_text())
    views = preview_views(s["build"]["cache"], s["data"]["train"], 4)
    assert [v["slot"] for v in views] == [0, 1, 2, 3]
    assert views[0]["lam"] == pytest.approx(views[1]["lam"]) and views[0]["partner"] == views[1]["digit"]


def test_parity_doc_tables_have_the_columns_the_demo_prints():
    """docs/parity.md's demo tables are the demo's own output (`demo-out/summary.md`): same header."""
    rows = [
        StudentRow(0, s, kd, 99.0, 99.0, 99.0, 1.0, 1.0 if kd == "online" else 0.0, "x", teachers=t)
        for s, kd, t in [
            ("test_resnet", "none", ""),
            ("test_resnet", "cached", ""),
            ("test_resnet", "online", ""),
            ("test_efficientnet", "cached", ""),
            ("test_resnet", "cached", "resnet10t,resnet14t"),
        ]
    ]
    config = {
        "student": "test_resnet",
        "student2": "test_efficientnet",
        "teacher": "resnet10t",
        "teacher2": "resnet14t",
        "seeds": 1,
        "threads": 1,
        "quick": False,
        "out": "demo-out",
    }
    teacher = {"model": "resnet10t", "top1": 99.0, "seconds": 1.0}
    s = DemoSummary(
        config,
        {"num_train": 1497, "num_val": 300},
        teacher,
        {"epochs": 10, "views": 14960, "seconds": 1.0, "teacher_s": 1.0, "cache": "demo-out/cache"},
        {**teacher, "model": "resnet14t"},
        {"seconds": 1.0, "teacher_s": 1.0},
        rows,
    )
    doc = (REPO / "docs" / "parity.md").read_text()
    header = parity_markdown(s).splitlines()[0]
    assert header in doc.splitlines()
    printed = format_table(s).splitlines()[2]  # the column heads of the printed table
    assert printed in doc.splitlines()
