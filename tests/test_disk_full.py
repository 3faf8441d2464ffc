"""A full disk stops the build with one line (where, how many units are committed, rerun to resume), leaves
nothing half-written under a final name, and once space is back the same command gives the content hash
of a clean build. Both backends; the disk fills up after N writes of the local storage and stays full."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from build_helpers import cache_info, run_cli, three_class_setup, tiny_build

# zarr: build.json, the root and epoch 0's metadata (9 files), unit 0 (6 chunks, marker, stats) = 17, unit 1
# = 25; the 30th write is the 5th chunk of unit 2. wds: build.json, then a shard and its stats per unit; the
# 6th write is unit 2's shard.
FULL_AFTER = {"zarr": 29, "wds": 5}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk_full")
    data, weights = three_class_setup(root, per_class=6)  # 18 slots per epoch: 5 units of 4 (the last of 2)
    refs = {}
    for backend in FULL_AFTER:
        run_cli(*build(data, weights, root / f"ref-{backend}", backend))
        refs[backend] = cache_info(root / f"ref-{backend}")["content_digest"]
    return data, weights, refs


def build(data: Path, weights: Path, out: Path, backend: str) -> list[str]:
    return tiny_build(data, weights, out, "--epochs", "2", "--unit-size", "4", "--format", backend)


def fill_disk_after(monkeypatch, writes: int) -> None:
    """Every local write after the first ``writes`` fails as a full disk does: part of the bytes reach the
    temporary file, then ENOSPC (write(2) names no file). The real atomic_file is left to clean up."""
    import kdcache.storage.local as local
    from kdcache.storage.atomic import atomic_file

    real = local.write_atomic
    count = {"n": 0}

    def full(path, data, *, exclusive=False):
        count["n"] += 1
        if count["n"] <= writes:
            return real(path, data, exclusive=exclusive)
        with atomic_file(path) as f:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "write_atomic", full)


@pytest.mark.parametrize("backend", sorted(FULL_AFTER))
def test_a_full_disk_stops_the_build_cleanly_and_the_rerun_completes_it(setup, tmp_path, monkeypatch, backend):
    from kdcache.teacher_cache.store import open_cache

    data, weights, refs = setup
    out = tmp_path / "c"
    with monkeypatch.context() as m:
        fill_disk_after(m, FULL_AFTER[backend])
        proc = run_cli(*build(data, weights, out, backend), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "disk full" in x]
    assert line.startswith(f"Error: disk full at {out}/") and "(No space left on device)" in line
    assert "2 of 10 units committed, rerun to resume" in line

    # Nothing half-written is visible: no temporary file is left, and every committed unit reads back whole.
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    reader = open_cache(out, allow_unfinished=True)
    assert reader.completed_units() == {(0, 0), (0, 1)}
    for epoch, unit in reader.completed_units():
        reader.read_unit(epoch, unit)
    if backend == "zarr":  # unit 2 got 4 of its 6 chunk files before the disk filled: no marker, so invisible
        chunks = [p for p in out.glob("e00000/*/c/2*") if p.is_file()] + list(out.glob("e00000/*/c/2/0"))
        assert len(chunks) == 4 and not (out / "done/e00000/u000002.json").exists()

    run_cli(*build(data, weights, out, backend))  # space is back: the same command
    assert cache_info(out)["content_digest"] == refs[backend]
