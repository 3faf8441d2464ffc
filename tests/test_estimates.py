"""What the build tells a user before and while it runs: the bytes it will write (its first line), the
time the rest will take (from the first batches on), and a bottleneck remedy that fits the device.
No timing is asserted: only that the figures are there, consistent, and say the right thing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from build_helpers import run_cli, three_class_setup, tiny_build

from kdcache.bottleneck import FeedTimes, feed_report
from kdcache.teacher_cache.teacher_pass.dry_run import _marker_bytes
from kdcache.teacher_cache.teacher_pass.loop import BuildStats
from kdcache.teacher_cache.teacher_pass.schedule import Unit

CUDA_ONLY = ("--amp", "--channels-last", "--compile")
PLAN = re.compile(r"^build: .* views to compute .*about (?P<bytes>[\d.,]+ [kMGT]?B) more, (?P<per_view>[\d.,]+) B/view")
ETA = re.compile(
    r"^build: (?P<n>\d+)/(?P<of>\d+) batches; teacher: [\d.]+ views/s, about .+ for the remaining ([\d,]+) views"
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return three_class_setup(tmp_path_factory.mktemp("estimates"), per_class=7)  # 20 views per epoch


def _stored(cache: Path) -> tuple[int, int]:
    info = json.loads(run_cli("info", str(cache), "--json", "--no-hash").stdout)
    return info["views"], info["bytes_on_disk"]


@pytest.mark.parametrize("backend", ["zarr", "wds"])
def test_first_line_bytes_fit_a_small_cache(inputs, tmp_path, backend):
    """A tiny cache is mostly fixed overhead (hundreds of B/view): the first line's B/view says so instead
    of an ImageNet-sized unit's 48 B/view (the line used to say 48.2 for a cache that came out at 598)."""
    data, weights = inputs
    out = tmp_path / "c"
    err = run_cli(*tiny_build(data, weights, out, "--epochs", "2", "--format", backend)).stderr
    line = next(x for x in err.splitlines() if x.startswith("build: ") and "views to compute" in x)
    per_view = float(PLAN.match(line)["per_view"].replace(",", ""))
    views, size = _stored(out)
    assert per_view == pytest.approx(size / views, rel=0.25), (line, size / views)
    if backend == "zarr":  # chunks of 6 views: the per-unit and per-epoch files outweigh them
        assert "a small cache is mostly fixed overhead" in line


def test_first_line_of_a_resumed_build_counts_only_what_is_left(inputs, tmp_path):
    data, weights = inputs
    out = tmp_path / "c"
    run_cli(*tiny_build(data, weights, out, "--epochs", "1"))
    _, one = _stored(out)
    err = run_cli(*tiny_build(data, weights, out, "--epochs", "2")).stderr  # extends by one epoch
    line = next(x for x in err.splitlines() if "views to compute" in x)
    assert line.startswith("build: 20 views to compute (2 epoch(s) x 20 slots, 4 of 8 units already done)")
    _, two = _stored(out)
    per_view = float(PLAN.match(line)["per_view"].replace(",", ""))
    # The new epoch's chunks, markers, stats and metadata, and the rewritten manifest and fidelity summary.
    assert per_view * 20 == pytest.approx(two - one, rel=0.35), (line, two - one)


def test_marker_bytes_are_the_writers():
    for unit in (Unit(0, 0, 0, 2), Unit(609, 125, 1_280_000, 1_166), Unit(12_345, 7, 70, 10_240)):
        info = {"epoch": unit.epoch, "unit": unit.index, "slots": [unit.start, unit.start + unit.size]}
        assert _marker_bytes(unit) == len(json.dumps(info)) + 1


def test_a_short_build_shows_its_time_left_from_the_first_batch(inputs, tmp_path):
    """Seven batches (units of 6 views cut into batches of 4 + 2, the last unit 2 views): batches 1, 2 and 4
    print the rate and the time left (the old build waited for 20 batches: a short build never showed one)."""
    data, weights = inputs
    err = run_cli(*tiny_build(data, weights, tmp_path / "c")).stderr
    found = [m for m in map(ETA.match, err.splitlines()) if m]
    assert [int(m["n"]) for m in found] == [1, 2, 4], err
    assert all(int(m["of"]) == 7 for m in found)
    assert [int(m.group(3).replace(",", "")) for m in found] == [16, 14, 8]  # of 20 views: 4, 2, 4, 2, ...


def test_estimates_come_at_1_2_4_then_every_log_every():
    from kdcache.teacher_cache.teacher_pass.loop import estimate_due

    due = [n for n in range(1, 1001) if estimate_due(n)]
    assert due == [1, 2, 4, 8, 16, 32, 64, 128, 200, 400, 600, 800, 1000]


def test_eta_first_from_the_start_then_from_the_first_batch():
    from kdcache.teacher_cache.teacher_pass.loop import Eta

    eta = Eta(start=100.0)
    first = eta.line(110.0, 10, 90)  # 10 views in 10 s, worker start-up included
    assert first.startswith("teacher: 1.0 views/s, about 90 s for the remaining 90 views")
    later = eta.line(111.0, 30, 70)  # 20 views in the 1 s since the first batch
    assert later.startswith("teacher: 20.0 views/s, about 4 s for the remaining 70 views")
    assert eta.postfix(later) == "about 4 s"


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_remedies_off_cuda_name_no_cuda_flags(device):
    from kdcache.bottleneck import student_remedy, teacher_remedy

    for remedy in (teacher_remedy(device), student_remedy(device)):
        assert not any(flag in remedy for flag in CUDA_ONLY), remedy
        assert "--device cuda" in remedy
    teacher_bound = FeedTimes(seconds=10.0, wait_seconds=1.0, work_seconds=8.0)
    report = BuildStats(100, 1, 10.0, 8.0, 1.0, workers=2, device=device).bottleneck_report()
    assert report == feed_report(teacher_bound, 2, "teacher", teacher_remedy(device))
    assert report.startswith("waiting for views 10%, teacher 80% of the time: the teacher is the bottleneck")
    assert not any(flag in report for flag in CUDA_ONLY)


def test_remedies_on_cuda_keep_the_cuda_flags():
    from kdcache.bottleneck import student_remedy, teacher_remedy

    assert all(flag in teacher_remedy("cuda:1") for flag in CUDA_ONLY)
    assert all(flag in student_remedy("cuda") for flag in CUDA_ONLY)
    report = BuildStats(100, 1, 10.0, 8.0, 1.0, workers=2, device="cuda").bottleneck_report()
    assert "--amp" in report


def test_a_cpu_build_summary_names_no_cuda_remedy(inputs, tmp_path):
    """Whichever side the verdict names, a CPU build's summary advises nothing that needs CUDA."""
    data, weights = inputs
    err = run_cli(*tiny_build(data, weights, tmp_path / "c")).stderr
    line = next(x for x in err.splitlines() if x.strip().startswith("bottleneck"))
    assert not any(flag in line for flag in CUDA_ONLY), line
