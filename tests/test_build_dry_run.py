"""``kdcache build --dry-run``: the plan writes nothing anywhere, and its views, units, objects and bytes
are those of the real build of the same options (counted on the real build's files)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import pytest
from build_helpers import run_cli, three_class_setup, tiny_build

from kdcache.cli.build import dry_run_plan
from kdcache.teacher_cache.teacher_pass.config import BuildConfig
from kdcache.teacher_cache.teacher_pass.dry_run import BuildPlan, hours

# 7 images per class: 21 samples -> 20 views per epoch; units of 6 views -> 4 units (the last of 2), so
# the counts cover a partial unit, whose zarr chunks are still written at the full unit size.
PER_CLASS = 7


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return three_class_setup(tmp_path_factory.mktemp("dry-run-inputs"), per_class=PER_CLASS)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The process's temporary directory, redirected to a folder of this test's own (the machine's /tmp is
    shared with other processes, so a listing of it would not prove anything)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots``: kind, size, mtime and content hash of files."""
    out: dict[str, tuple] = {}
    for root in roots:
        out[str(root)] = ("exists", root.exists())
        if not root.exists():
            continue
        for dirpath, dirs, files in os.walk(root):
            for d in dirs:
                out[os.path.join(dirpath, d)] = ("dir",)
            for f in files:
                path = os.path.join(dirpath, f)
                st = os.lstat(path)
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                out[path] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


def files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


def config(inputs, out: Path | None, *, fmt: str = "zarr", epochs: int = 1, **dry) -> BuildConfig:
    """The BuildConfig of ``tiny_build(...) + --format fmt --epochs E --dry-run``."""
    data, weights = inputs
    return BuildConfig(
        teacher="test_resnet",
        teacher_weights=str(weights),
        data=str(data),
        out=None if out is None else str(out),
        image_size=32,
        topk=3,
        unit_size=6,
        batch_size=4,
        epochs=epochs,
        workers=0,
        progress=False,
        format=fmt,
        dry_run=True,
        **dry,
    )


def dry_run_cli(inputs, out: Path | None, *extra: str):
    data, weights = inputs
    return run_cli(*tiny_build(data, weights, out, "--dry-run", *extra))


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_dry_run_writes_nothing_and_predicts_the_real_build(inputs, tmp_path, private_tmp, fmt):
    out = tmp_path / "cache"
    home = Path(os.environ["KDCACHE_HOME"])  # conftest: a registry root of this test's own
    watched = (tmp_path, home, private_tmp, inputs[0].parent)
    before = snapshot(*watched)
    res = dry_run_cli(inputs, out, "--format", fmt, "--epochs", "2")  # the rate is measured: the teacher runs
    assert snapshot(*watched) == before
    assert not out.exists()
    assert "nothing was written" in res.stdout
    assert "measured here" in res.stdout, res.stdout
    assert re.search(r"time\s+40 views / \(", res.stdout), res.stdout

    plan = dry_run_plan(config(inputs, out, fmt=fmt, epochs=2, assume_rate=1.0))
    assert (plan.state, plan.views_total, plan.views_done, plan.units_total) == ("new", 40, 0, 8)
    assert (plan.units_per_epoch, plan.last_unit_views) == (4, 2)
    assert snapshot(*watched) == before

    data, weights = inputs
    run_cli(*tiny_build(data, weights, out, "--format", fmt, "--epochs", "2"))
    written = files_under(out)
    assert plan.objects_total == plan.objects_new == len(written)
    units = [p for p in written if p.suffix == ".tar" or p.parent.parent.name == "done"]
    assert len(units) == plan.units_total
    size = sum(p.stat().st_size for p in written)
    assert size <= plan.bytes.upper
    assert plan.bytes.expected == pytest.approx(size, rel=0.1), (plan.bytes, size)
    # Mostly fixed overhead at this size: hundreds of bytes per view, not an ImageNet-sized unit's 48 (zarr).
    assert plan.bytes.expected / plan.views_total > 300


def test_assumed_rate_and_world_size_give_the_hours(inputs, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    res = dry_run_cli(inputs, out, "--epochs", "2", "--assume-rate", "0.002", "--world-size", "8")
    expected = hours(40, 0.002, 8)
    assert expected == pytest.approx(40 / (0.002 * 8) / 3600)  # 0.694 h
    assert f"40 views / (0.002 views/s x 8 rank(s)) = {expected:,.3f} h" in res.stdout, res.stdout
    assert "assumed (--assume-rate)" in res.stdout
    assert "measured here" not in res.stdout
    assert not out.exists()

    # 8 units over 8 ranks: one unit each, the busiest (rank 0: epoch 0 unit 0) has a full one.
    plan = dry_run_plan(config(inputs, out, epochs=2, assume_rate=0.002, world_size=8))
    assert (plan.world_size, plan.rank_units, plan.rank_views) == (8, 1, 6)
    assert plan.hours == pytest.approx(expected)
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun's variable is the default
    plan = dry_run_plan(config(inputs, out, epochs=2, assume_rate=0.002))
    assert (plan.world_size, plan.rank_units) == (4, 2)
    assert plan.hours == pytest.approx(hours(40, 0.002, 4))


def _plan_unchanged(inputs, out: Path, epochs: int, private_tmp: Path) -> BuildPlan:
    """The dry run's plan for ``out``, run through the command line too, checking both leave ``out``
    (and the registry root and temporary directory) byte for byte, mtime for mtime, as they were."""
    watched = (out, Path(os.environ["KDCACHE_HOME"]), private_tmp)
    before = snapshot(*watched)
    res = dry_run_cli(inputs, out, "--epochs", str(epochs), "--assume-rate", "3")
    plan = dry_run_plan(config(inputs, out, epochs=epochs, assume_rate=3.0))
    assert snapshot(*watched) == before
    assert f"done           {plan.views_done:,} of {plan.views_total:,} views" in res.stdout, res.stdout
    return plan


def test_existing_caches_are_reported_and_left_alone(inputs, tmp_path, private_tmp):
    data, weights = inputs
    out = tmp_path / "cache"
    run_cli(*tiny_build(data, weights, out))  # one finished epoch

    plan = _plan_unchanged(inputs, out, 1, private_tmp)
    assert (plan.state, plan.views_done, plan.views_left, plan.hours) == ("complete", 20, 0, 0.0)
    assert plan.objects_total == len(files_under(out))

    plan = _plan_unchanged(inputs, out, 2, private_tmp)
    assert (plan.state, plan.views_done, plan.units_done, plan.views_left) == ("extend", 20, 4, 20)
    assert plan.objects_new == plan.objects_total - len(files_under(out))
    assert plan.hours == pytest.approx(hours(20, 3.0, 1))
    run_cli(*tiny_build(data, weights, out, "--epochs", "2"))
    assert len(files_under(out)) == plan.objects_total

    # An unfinished build: no final manifest, and the last unit of epoch 1 not committed.
    (out / "manifest.json").unlink()
    (out / "done" / "e00001" / "u000003.json").unlink()
    plan = _plan_unchanged(inputs, out, 2, private_tmp)
    assert (plan.state, plan.units_done, plan.views_done, plan.views_left) == ("resume", 7, 38, 2)


def test_registry_destination_is_named_not_created(inputs, tmp_path, monkeypatch, private_tmp):
    home = tmp_path / "no-registry-yet"
    monkeypatch.setenv("KDCACHE_HOME", str(home))
    res = dry_run_cli(inputs, None, "--assume-rate", "3")
    assert not home.exists()
    assert "registry       key " in res.stdout and str(home) in res.stdout, res.stdout
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "fragments", "status"),
    [
        (["--dry-run", "--assume-rate", "0"], ["--assume-rate", "0"], 2),
        (["--dry-run", "--world-size", "0"], ["--world-size", "0"], 2),
        (["--assume-rate", "5"], ["--assume-rate", "add --dry-run"], 1),
        (["--world-size", "8"], ["--world-size", "add --dry-run"], 1),
    ],
)
def test_bad_values_are_one_clean_error(inputs, tmp_path, extra, fragments, status):
    data, weights = inputs
    out = tmp_path / "cache"
    res = run_cli(*tiny_build(data, weights, out, *extra), check=False)
    text = res.stdout + res.stderr
    assert res.returncode == status, text
    assert "Traceback" not in text
    assert len([line for line in text.splitlines() if line.startswith("Error:")]) == 1, text
    assert all(f in text for f in fragments), text
    assert not out.exists()
