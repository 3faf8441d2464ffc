"""`kdcache verify --repair`: damaged units of a finished cache (a truncated file, a flipped byte) are found by
their checksums, lose their commit markers and are rewritten by the build with the cache's recorded
settings, so the cache gets back the content hash it had; plain verify only reads. Without the teacher's
weights or the data, repair says so and prints the build command that finishes it."""

from __future__ import annotations

import shlex
import shutil
import tarfile
from pathlib import Path

import pytest
from build_helpers import cache_info, run_cli, three_class_setup, tiny_build, write_teacher

BACKENDS = ("zarr", "wds")
# The rewrite's teacher batches as the build's (tiny_build: --batch-size 4), no worker processes.
REPAIR = ("--repair", "--workers", "0", "--batch-size", "4")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    data, weights = three_class_setup(root, per_class=6)  # 18 slots per epoch: 5 units of 4 (the last of 2)
    refs = {}
    for backend in BACKENDS:
        out = root / f"ref-{backend}"
        run_cli(*build(data, weights, out, backend))
        refs[backend] = (out, cache_info(out)["content_digest"])
    return root, data, weights, refs


def build(data: Path, weights: Path, out: Path, backend: str = "zarr", *extra: str) -> list[str]:
    return tiny_build(data, weights, out, "--epochs", "2", "--unit-size", "4", "--format", backend, *extra)


def unit_file(cache: Path, backend: str, epoch: int, unit: int) -> Path:
    """A file holding the soft labels of one unit: zarr's top-k log-prob chunk, or the wds shard."""
    if backend == "zarr":
        return cache / f"e{epoch:05d}" / "topk_logprob" / "c" / str(unit) / "0"
    return cache / f"e{epoch:05d}" / f"u{unit:06d}.tar"


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
        return
    at = len(raw) // 2
    if path.suffix == ".tar":  # a byte of the top-k log-probs' payload (a tar header has a checksum of its own)
        with tarfile.open(path) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("topk_logprob.npy"))
        at = member.offset_data + member.size - 1
    raw[at] ^= 0x5A
    path.write_bytes(bytes(raw))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_repair_rewrites_a_damaged_unit_to_the_original_content_hash(setup, tmp_path, backend, how):
    _, _, _, refs = setup
    ref, digest = refs[backend]
    cache = tmp_path / "c"
    shutil.copytree(ref, cache)
    victim = unit_file(cache, backend, 1, 2)
    damage(victim, how)

    before = snapshot(cache)
    plain = run_cli("verify", str(cache), "--no-teacher", "--views", "64", check=False)
    assert plain.returncode != 0 and str(victim) in plain.stderr
    assert snapshot(cache) == before  # plain verify only reads

    fixed = run_cli("verify", str(cache), *REPAIR)
    assert "read back 10 committed unit(s) in 1 store(s); 1 damaged" in fixed.stdout
    assert f"damaged  epoch 1 unit 2: {victim}" in fixed.stdout and "removed  its commit marker" in fixed.stdout
    assert "rewrote  1 unit(s) of teacher test_resnet" in fixed.stdout and "OK: 1 unit(s) rewritten" in fixed.stdout
    assert cache_info(cache)["content_digest"] == digest
    again = run_cli("verify", str(cache), *REPAIR)
    assert "0 damaged" in again.stdout and "nothing to repair" in again.stdout


def test_without_the_weights_or_the_data_repair_prints_the_command_that_finishes_it(setup, tmp_path):
    _, data, weights, refs = setup
    mine = Path(shutil.copy(weights, tmp_path / "teacher.pth"))
    cache = tmp_path / "c"
    run_cli(*build(data, mine, cache))  # the same content as ref-zarr, built with weights that can go
    assert cache_info(cache)["content_digest"] == refs["zarr"][1]
    damage(unit_file(cache, "zarr", 0, 1), "flipped")

    mine.rename(tmp_path / "elsewhere.pth")
    proc = run_cli("verify", str(cache), *REPAIR, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot rewrite the units of teacher test_resnet here" in proc.stderr and str(mine) in proc.stderr
    (command,) = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("kdcache build")]
    assert not (cache / "done" / "e00000" / "u000001.json").exists()  # readers see the unit as not built yet
    plain = run_cli("verify", str(cache), "--no-teacher", check=False)  # and plain verify never passes it
    assert plain.returncode != 0 and "MISSING epoch 0 unit 1" in plain.stderr

    (tmp_path / "elsewhere.pth").rename(mine)  # the weights are back: the printed command finishes the repair
    run_cli(*shlex.split(command)[1:])
    assert cache_info(cache)["content_digest"] == refs["zarr"][1]

    # The data moved: repair says so, and --data where it is now lets it finish.
    damage(unit_file(cache, "zarr", 1, 4), "truncated")
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    gone = run_cli("verify", str(cache), *REPAIR, "--data", str(tmp_path / "nowhere"), check=False)
    assert gone.returncode != 0 and "cannot rewrite" in gone.stderr and "nowhere" in gone.stderr
    assert "1 missing from complete epochs" in run_cli("verify", str(cache), *REPAIR, "--data", str(moved)).stdout
    assert cache_info(cache)["content_digest"] == refs["zarr"][1]


def test_repair_covers_teacher_layers(setup, tmp_path):
    from kdcache.teacher_cache.store import open_cache
    from kdcache.teacher_cache.store.content_hash import content_hash

    root, data, _, refs = setup
    cache = tmp_path / "c"
    shutil.copytree(refs["zarr"][0], cache)
    second = write_teacher(root / "second.pth", 3, seed=1)
    run_cli(*build(data, second, cache))  # another teacher on the same views: layers/<id>/
    (layer,) = sorted((cache / "layers").iterdir())
    layer_hash = content_hash(open_cache(layer))
    damage(unit_file(layer, "zarr", 1, 3), "flipped")
    damage(unit_file(cache, "zarr", 1, 0), "truncated")  # the views the layer's rewrite replays, too

    fixed = run_cli("verify", str(cache), *REPAIR)
    assert "in 2 store(s); 2 damaged" in fixed.stdout and f"damaged  layers/{layer.name} epoch 1 unit 3" in fixed.stdout
    assert fixed.stdout.count("rewrote  1 unit(s)") == 2
    assert cache_info(cache)["content_digest"] == refs["zarr"][1]
    assert content_hash(open_cache(layer)) == layer_hash
