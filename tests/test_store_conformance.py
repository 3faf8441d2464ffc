"""Conformance suite: every cache backend must pass every test here (parametrized over backends)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kdcache.storage import open_storage
from kdcache.teacher_cache import (
    FORMAT_VERSION,
    BuildNotFinishedError,
    CacheError,
    CorruptShardError,
    IncompleteEpochError,
    ManifestMismatchError,
    NotACacheError,
    UnitData,
    UnsupportedFormatError,
    content_hash,
    create_or_open_writer,
    num_units,
    open_cache,
)
from kdcache.teacher_cache.store.layout import BUILD_HEADER, MANIFEST
from kdcache.testing.synthetic_cache import synthetic_manifest, synthetic_unit

BACKENDS = ["zarr", "wds"]
EPOCHS = 2
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    # Durability is not under test here (crash consistency is, by the commit order); fsync on this
    # disk costs ~5 ms a call and the suite makes hundreds.
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(params=["local", "memory", "s3"])
def loc(request, tmp_path):
    """Where a test's caches live: a local directory, or an fsspec URL: the in-process memory:// store,
    and S3 itself (moto's server on loopback, tests/s3_helpers.py; conditional PUTs included)."""
    if request.param == "local":
        yield lambda name: tmp_path / name
        return
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        yield lambda name: f"{bucket}/{name}"
        return
    import uuid

    import fsspec

    bucket = f"kdc-{uuid.uuid4().hex[:12]}"
    yield lambda name: f"memory://{bucket}/{name}"
    fsspec.filesystem("memory").rm(f"/{bucket}", recursive=True)


def make_manifest(backend: str, **kw):
    # 301 samples -> 300 slots -> units of 64: 4 full units and a short last one (44 views).
    return synthetic_manifest(backend=backend, num_samples=301, unit_size=64, epochs=EPOCHS, **kw)


@pytest.fixture(scope="module")
def content() -> dict[tuple[int, int], UnitData]:
    m = make_manifest("zarr")
    return {(e, u): synthetic_unit(m, e, u) for e in range(EPOCHS) for u in range(num_units(m))}


def write_cache(path: Path, backend: str, content, order=None, finalize: bool = True):
    m = make_manifest(backend)
    w = create_or_open_writer(path, m)
    for e, u in order if order is not None else sorted(content):
        w.write_unit(e, u, content[(e, u)])
    if finalize:
        w.finalize()
    return w


def expected_epoch(content, epoch: int) -> UnitData:
    return UnitData.concat([content[(epoch, u)] for u in sorted(u for e, u in content if e == epoch)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_of_every_field_in_any_write_order(loc, backend, content):
    order = sorted(content)
    random.Random(1).shuffle(order)
    write_cache(loc("c"), backend, content, order)
    r = open_cache(loc("c"))
    assert r.manifest.backend == backend
    assert r.completed_units() == set(content)
    assert r.epochs_complete == [0, 1]
    assert r.num_views() == EPOCHS * 300
    for e in range(EPOCHS):
        block = r.load_epoch(e)
        assert block.epoch == e and block.num_views == 300
        assert block.equals(expected_epoch(content, e))
        for name, arr in block.arrays().items():
            assert arr.dtype == getattr(content[(e, 0)], name).dtype, name
    assert r.read_unit(1, 4).equals(content[(1, 4)])  # the short last unit


@pytest.mark.parametrize("backend", BACKENDS)
def test_manifest_round_trip(loc, backend, content):
    w = write_cache(loc("c"), backend, content, finalize=False)
    final = w.finalize()
    assert final.epochs_complete == (0, 1)
    r = open_cache(loc("c"))
    assert r.manifest == final
    assert r.manifest.replace(epochs_complete=()) == make_manifest(backend).replace(created=final.created)


@pytest.mark.parametrize("backend", BACKENDS)
def test_incomplete_units_are_invisible(loc, backend, content, monkeypatch):
    path = loc("c")
    m = make_manifest(backend)
    w = create_or_open_writer(path, m)
    w.write_unit(0, 1, content[(0, 1)])
    w.write_unit(0, 3, content[(0, 3)])
    # A unit whose commit fails half-way (data written, commit step dies) must stay invisible.
    # The commit is the zarr marker (done/...) or the wds shard itself.
    written = []
    for method in ("write", "write_new"):
        real = getattr(w.storage, method)

        def crash(key, data, real=real):
            if key.startswith("done/") or key.endswith(".tar"):
                raise OSError("simulated crash before the commit")
            written.append(key)
            return real(key, data)

        monkeypatch.setattr(w.storage, method, crash)
    with pytest.raises(OSError, match="simulated"):
        w.write_unit(0, 2, content[(0, 2)])
    monkeypatch.undo()
    assert len(written) == (6 if backend == "zarr" else 0)  # zarr: the unit's chunk files did get written

    r = open_cache(path, allow_unfinished=True)
    assert r.completed_units() == {(0, 1), (0, 3)}
    assert w.completed_units() == {(0, 1), (0, 3)}
    assert r.epochs_complete == []
    assert r.num_views() == 128
    with pytest.raises(IncompleteEpochError, match=r"3 of 5 units missing \(0, 2, 4\)") as info:
        r.load_epoch(0)
    assert info.value.missing_units == [0, 2, 4]
    with pytest.raises(IncompleteEpochError):
        r.read_unit(0, 2)
    # Resume: the failed unit is simply written again.
    w2 = create_or_open_writer(path, m)
    for u in (0, 2, 4):
        w2.write_unit(0, u, content[(0, u)])
    w2.finalize()
    r = open_cache(path)
    assert r.epochs_complete == [0]
    assert r.load_epoch(0).equals(expected_epoch(content, 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_writer_rejects_rewriting_a_committed_unit_and_bad_data(loc, backend, content):
    w = create_or_open_writer(loc("c"), make_manifest(backend))
    w.write_unit(0, 0, content[(0, 0)])
    with pytest.raises(CacheError, match="already committed"):
        w.write_unit(0, 0, content[(0, 0)])
    with pytest.raises(ValueError, match="expected int32"):
        w.write_unit(0, 4, content[(0, 0)])  # 64 rows for a 44-row unit
    with pytest.raises(ValueError, match="beyond the 2 planned epochs"):
        w.write_unit(2, 0, content[(0, 0)])
    bad = UnitData(**{**content[(0, 1)].arrays(), "topk_class": content[(0, 1)].topk_class + 100})
    with pytest.raises(ValueError, match=r"topk_class values must lie in 0\.\.9"):
        w.write_unit(0, 1, bad)
    assert w.completed_units() == {(0, 0)}


def test_content_digest_is_identical_across_backends_write_orders_and_storage(tmp_path, content):
    import uuid

    order = sorted(content)
    digests = set()
    remote = f"memory://kdc-{uuid.uuid4().hex[:12]}"
    places = [tmp_path / "c0", tmp_path / "c1", f"{remote}/c2", f"{remote}/c3"]
    for i, backend in enumerate(["zarr", "wds", "zarr", "wds"]):
        write_cache(places[i], backend, content, order)
        digests.add(content_hash(open_cache(places[i])))
        random.Random(i).shuffle(order)
    assert len(digests) == 1
    # ...and it does see content: one changed log-prob changes it.
    changed = dict(content)
    lp = content[(1, 2)].topk_logprob.copy()
    lp[5, 2] = np.nextafter(lp[5, 2], np.float16(-np.inf))
    changed[(1, 2)] = UnitData(**{**content[(1, 2)].arrays(), "topk_logprob": lp})
    write_cache(tmp_path / "changed", "zarr", changed)
    assert content_hash(open_cache(tmp_path / "changed")) not in digests


_WORKER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from pathlib import Path
    from kdcache.teacher_cache import Manifest, UnitData, create_or_open_writer
    path, data_dir, start = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    m = Manifest.from_json((data_dir / "manifest.json").read_text())
    units = [tuple(int(x) for x in p.stem.split("_")) for p in sorted(data_dir.glob("*.npz"))]
    data = {k: UnitData.from_arrays(dict(np.load(data_dir / f"{k[0]}_{k[1]}.npz"))) for k in units}
    time.sleep(max(0.0, start - time.time()))  # every process opens the fresh store at the same moment
    w = create_or_open_writer(path, m)
    for e, u in units:
        w.write_unit(e, u, data[(e, u)])
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_processes_writing_different_units(tmp_path, backend, content):
    import time

    path, world = tmp_path / "c", 3
    m = make_manifest(backend)
    # Rank r takes units r::world, as the build does; each process gets its units as .npz files.
    for r in range(world):
        units = sorted(content)[r::world]
        d = tmp_path / f"rank{r}"
        d.mkdir()
        (d / "manifest.json").write_text(m.to_json())
        for e, u in units:
            np.savez(d / f"{e}_{u}.npz", **content[(e, u)].arrays())
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(tmp_path / f"rank{r}"), str(start)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    create_or_open_writer(path, m).finalize()
    write_cache(tmp_path / "ref", backend, content)
    r = open_cache(path)
    assert r.completed_units() == set(content)
    assert content_hash(r) == content_hash(open_cache(tmp_path / "ref"))
    leftovers = list(path.rglob(".*"))
    assert leftovers == [], leftovers


@pytest.mark.parametrize("backend", BACKENDS)
def test_reopen_checks_the_stored_header(loc, backend, content):
    path = loc("c")
    m = make_manifest(backend)
    create_or_open_writer(path, m)
    with pytest.raises(ManifestMismatchError, match=r"topk, teacher\.num_classes|num_classes") as info:
        create_or_open_writer(path, make_manifest(backend, num_classes=12))
    assert "num_classes" in info.value.fields
    with pytest.raises(ManifestMismatchError, match="seed"):
        create_or_open_writer(path, m.replace(seed=1))
    other = "wds" if backend == "zarr" else "zarr"
    with pytest.raises(ManifestMismatchError, match="backend"):
        create_or_open_writer(path, m, backend=other)
    # A later process's creation time is not a difference; more epochs extend the cache.
    w = create_or_open_writer(path, m.replace(created="2030-01-01T00:00:00+00:00", epochs_planned=3))
    assert w.manifest.epochs_planned == 3 and w.manifest.created == m.created
    for u in range(num_units(m)):
        w.write_unit(2, u, content[(0, u)])
    assert w.finalize().epochs_complete == (2,)
    assert json.loads(open_storage(path).read(BUILD_HEADER))["epochs_planned"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_newer_format_version_is_refused(loc, backend, content):
    path = loc("c")
    write_cache(path, backend, content)
    storage = open_storage(path)
    for name in (MANIFEST, BUILD_HEADER):
        doc = json.loads(storage.read(name))
        doc["format_version"] = FORMAT_VERSION + 1
        doc["field_from_the_future"] = True
        storage.write(name, json.dumps(doc).encode())
    with pytest.raises(UnsupportedFormatError, match="upgrade kdcache") as info:
        open_cache(path)
    assert MANIFEST in str(info.value)
    with pytest.raises(UnsupportedFormatError, match="upgrade kdcache"):
        create_or_open_writer(path, make_manifest(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_manifest_gives_a_clear_error(tmp_path, backend, content):
    with pytest.raises(NotACacheError, match="not a directory"):
        open_cache(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACacheError, match=r"not a kdcache cache.*kdcache build"):
        open_cache(tmp_path / "empty")
    write_cache(tmp_path / "c", backend, content, finalize=False)
    with pytest.raises(BuildNotFinishedError, match=r"has not finished.*kdcache build.*resume"):
        open_cache(tmp_path / "c")
    assert open_cache(tmp_path / "c", allow_unfinished=True).epochs_complete == [0, 1]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("not a cache")
    with pytest.raises(NotACacheError, match="not empty"):
        create_or_open_writer(tmp_path / "data", make_manifest(backend))


def _unit_files(path: Path, backend: str, epoch: int, unit: int) -> list[Path]:
    if backend == "wds":
        return [path / f"e{epoch:05d}" / f"u{unit:06d}.tar"]
    return sorted(p for p in (path / f"e{epoch:05d}").rglob("*") if p.is_file() and f"/c/{unit}" in p.as_posix())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_names_the_file(tmp_path, backend, damage, content):
    path = tmp_path / "c"
    write_cache(path, backend, content)
    files = _unit_files(path, backend, 1, 2)
    assert files
    victim = files[-1]  # zarr: topk_logprob's chunk sorts after the others; wds: the unit's tar
    raw = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "flip":
        i = len(raw) // 2
        victim.write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :])
    else:
        victim.unlink()
    r = open_cache(path)
    if backend == "wds" and damage == "delete":
        # The shard is the commit: without it the unit is simply not there.
        assert (1, 2) not in r.completed_units()
        with pytest.raises(IncompleteEpochError):
            r.load_epoch(1)
        return
    with pytest.raises(CorruptShardError) as info:
        r.load_epoch(1)
    assert info.value.path == victim
    assert str(victim) in str(info.value) and "kdcache build" in str(info.value)
    with pytest.raises(CorruptShardError):
        content_hash(r)
    assert r.load_epoch(0).equals(expected_epoch(content, 0))  # other epochs are unaffected


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_zarr_fast_path_and_zarr_decoding_agree(tmp_path, damage, content):
    """The reader decodes kdcache's own chunk files directly; zarr's own decoding must agree, and
    both must name a damaged file."""
    path = tmp_path / "c"
    write_cache(path, "zarr", content)
    fast, slow = open_cache(path), open_cache(path)
    slow.use_fast_path = False
    for e in range(EPOCHS):
        assert fast.load_epoch(e).equals(slow.load_epoch(e))
    assert fast.read_unit(0, 4).equals(slow.read_unit(0, 4))
    victim = path / "e00000" / "params" / "c" / "3" / "0"
    raw = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(raw[:-9])
    elif damage == "flip":
        victim.write_bytes(raw[:20] + bytes([raw[20] ^ 1]) + raw[21:])
    else:
        victim.unlink()
    for reader in (fast, slow):
        with pytest.raises(CorruptShardError) as info:
            reader.load_epoch(0)
        assert info.value.path == victim


def test_zarr_unit_is_exactly_one_chunk_file_per_array(tmp_path, content):
    import zarr

    path = tmp_path / "c"
    write_cache(path, "zarr", content)
    group = zarr.open_group(str(path / "e00001"), mode="r")
    for name in ("sample_id", "repeat", "params", "digest", "topk_logprob", "topk_class"):
        arr = group[name]
        assert arr.chunks[0] == 64 and arr.shape[0] == 300
        chunk_files = sorted((path / "e00001" / name / "c").iterdir())
        assert [p.name for p in chunk_files] == ["0", "1", "2", "3", "4"]
        # Plain zarr (no kdcache code) reads the same values.
        np.testing.assert_array_equal(arr[:], getattr(expected_epoch(content, 1), name))


def test_wds_shards_are_byte_identical_for_identical_content(tmp_path, content):
    write_cache(tmp_path / "a", "wds", content)
    write_cache(tmp_path / "b", "wds", content, order=sorted(content, reverse=True))
    for e, u in content:
        rel = Path(f"e{e:05d}") / f"u{u:06d}.tar"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_wds_streams_through_webdataset_with_node_and_worker_splitting(loc, content):
    from kdcache.teacher_cache import stream_views

    path = loc("c")
    write_cache(path, "wds", content)
    views = list(stream_views(path, epochs=[1]))
    assert [v["slot"] for v in views] == list(range(300))
    block = expected_epoch(content, 1)
    for name in ("sample_id", "repeat", "digest"):
        np.testing.assert_array_equal(np.array([v[name] for v in views]), getattr(block, name))
    np.testing.assert_array_equal(np.stack([v["topk_logprob"] for v in views]), block.topk_logprob)
    np.testing.assert_array_equal(np.stack([v["params"] for v in views]), block.params)

    # Two "nodes" each get half of the shards; together they see every view exactly once.
    def node(rank):
        return lambda urls: list(urls)[rank::2]

    halves = [list(stream_views(path, nodesplitter=node(r))) for r in range(2)]
    seen = sorted((v["epoch"], v["slot"]) for h in halves for v in h)
    assert seen == [(e, s) for e in range(EPOCHS) for s in range(300)]
    assert all(halves)

    # DataLoader workers split shards too (webdataset's split_by_worker).
    import torch

    loader = torch.utils.data.DataLoader(stream_views(path), batch_size=None, num_workers=2, collate_fn=_as_is)
    assert sorted((int(v["epoch"]), int(v["slot"])) for v in loader) == seen


def _as_is(view):
    return view  # torch's default collate cannot convert uint64 digests


def test_stream_views_refuses_a_zarr_cache(tmp_path, content):
    from kdcache.teacher_cache import stream_views

    write_cache(tmp_path / "c", "zarr", content)
    with pytest.raises(CacheError, match="kdcache export"):
        stream_views(tmp_path / "c")


def test_a_header_created_between_read_and_listing_is_compared_not_refused(tmp_path):
    """Two processes open the same new cache: one reads no header, the other creates it, the first then
    lists the folder and finds it. It must compare with that header, not call the folder foreign."""
    from kdcache.storage import LocalStorage

    m = make_manifest("zarr")
    create_or_open_writer(tmp_path / "c", m)  # the other process, first

    class LateHeader(LocalStorage):
        hidden = True

        def read(self, key: str) -> bytes:
            if key == BUILD_HEADER and LateHeader.hidden:  # our first read came before their create
                LateHeader.hidden = False
                raise self.missing(key)
            return super().read(key)

    writer = create_or_open_writer(LateHeader(tmp_path / "c"), m)
    assert writer.manifest.differences(m) == []
    LateHeader.hidden = True
    with pytest.raises(ManifestMismatchError, match="seed"):
        create_or_open_writer(LateHeader(tmp_path / "c"), m.replace(seed=m.seed + 1))


# ---- format version 2: the top-k plus a tail of 4-bit log-probs (store/labels.py) ---------------------------
V2 = {"num_classes": 50, "topk": 3, "tail_classes": 5}


def make_v2_manifest(backend: str):
    return synthetic_manifest(backend=backend, num_samples=301, unit_size=64, epochs=1, **V2)


@pytest.fixture(scope="module")
def v2_content() -> dict[tuple[int, int], UnitData]:
    m = make_v2_manifest("zarr")
    return {(0, u): synthetic_unit(m, 0, u) for u in range(num_units(m))}


def write_v2(path, backend: str, content) -> None:
    w = create_or_open_writer(path, make_v2_manifest(backend))
    for e, u in sorted(content):
        w.write_unit(e, u, content[(e, u)])
    w.finalize()


@pytest.mark.parametrize("backend", BACKENDS)
def test_format_2_round_trip_of_every_field(loc, backend, v2_content):
    write_v2(loc("c"), backend, v2_content)
    r = open_cache(loc("c"))
    m = r.manifest
    assert (m.format_version, m.topk, m.tail_classes, m.label_width) == (2, 3, 5, 8)
    assert r.manifest == make_v2_manifest(backend).replace(created=m.created, epochs_complete=(0,))
    block = r.load_epoch(0)
    assert block.topk_logprob.shape == block.topk_class.shape == (300, 8)  # in memory: top-(k+m) rows
    assert block.equals(expected_epoch(v2_content, 0))
    assert r.read_unit(0, 4).equals(v2_content[(0, 4)])  # the short last unit
    # the content has teeth: tail log-probs at several codes, below the anchor
    tail = block.topk_logprob[:, 3:].astype(np.float32)
    assert len(np.unique(block.topk_logprob[:, 2].astype(np.float32)[:, None] - tail)) > 10


def test_format_2_content_hash_is_identical_across_backends_and_sees_the_tail(tmp_path, v2_content):
    import uuid

    remote = f"memory://kdc-{uuid.uuid4().hex[:12]}"
    places = [(tmp_path / "z", "zarr"), (tmp_path / "w", "wds"), (f"{remote}/z", "zarr"), (f"{remote}/w", "wds")]
    digests = set()
    for place, backend in places:
        write_v2(place, backend, v2_content)
        digests.add(content_hash(open_cache(place)))
    assert len(digests) == 1
    # one tail value moved to the next code (still on the grid) changes it
    from kdcache.teacher_cache.store.tail import TAIL_STEP

    changed = dict(v2_content)
    lp = v2_content[(0, 2)].topk_logprob.copy()
    lp[7, 7] = np.float16(np.float32(lp[7, 7]) - TAIL_STEP)  # the last column: the row stays sorted
    changed[(0, 2)] = UnitData(**{**v2_content[(0, 2)].arrays(), "topk_logprob": lp})
    write_v2(tmp_path / "changed", "zarr", changed)
    assert content_hash(open_cache(tmp_path / "changed")) not in digests


def test_format_2_stored_fields_are_plain_zarr_arrays_and_tar_members(tmp_path, v2_content):
    """What a reader that knows only zarr or tar sees: version 1's top-k fields unchanged (width k), and the
    tail as two more fields, codes as uint8 0..15 that decode to the rows kdcache reads."""
    import io
    import tarfile

    import zarr

    from kdcache.teacher_cache import stream_views
    from kdcache.teacher_cache.store.tail import tail_values

    block = expected_epoch(v2_content, 0)
    write_v2(tmp_path / "z", "zarr", v2_content)
    raw = {
        name: zarr.open_array(str(tmp_path / "z" / "e00000" / name), mode="r")[:]
        for name in ("topk_logprob", "topk_class", "tail_class", "tail_code")
    }
    assert raw["topk_logprob"].dtype == np.float16 and raw["topk_logprob"].shape == (300, 3)
    assert raw["tail_code"].dtype == np.uint8 and raw["tail_code"].shape == (300, 5)
    assert raw["tail_code"].max() <= 15 and len(np.unique(raw["tail_code"])) > 2
    np.testing.assert_array_equal(raw["topk_logprob"].view(np.uint16), block.topk_logprob[:, :3].view(np.uint16))
    np.testing.assert_array_equal(raw["topk_class"], block.topk_class[:, :3])
    np.testing.assert_array_equal(raw["tail_class"], block.topk_class[:, 3:])
    decoded = tail_values(raw["topk_logprob"][:, -1], raw["tail_code"])
    np.testing.assert_array_equal(decoded.view(np.uint16), block.topk_logprob[:, 3:].view(np.uint16))

    write_v2(tmp_path / "w", "wds", v2_content)
    with tarfile.open(tmp_path / "w" / "e00000" / "u000001.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for name in ("topk_logprob", "topk_class", "tail_class", "tail_code"):
        arr = np.load(io.BytesIO(members[f"e00000u000001.{name}.npy"]))
        np.testing.assert_array_equal(arr, raw[name][64:128])
    assert json.loads(members["e00000u000001.meta.json"])["format_version"] == 2

    # streaming (webdataset) yields the decoded top-(k+m) rows, as the reader does
    views = list(stream_views(tmp_path / "w"))
    assert [v["slot"] for v in views] == list(range(300))
    np.testing.assert_array_equal(np.stack([v["topk_logprob"] for v in views]), block.topk_logprob)
    np.testing.assert_array_equal(np.stack([v["topk_class"] for v in views]), block.topk_class)


@pytest.mark.parametrize("backend", BACKENDS)
def test_format_2_writer_refuses_a_tail_off_the_grid_and_commits_nothing(loc, backend, v2_content):
    w = create_or_open_writer(loc("c"), make_v2_manifest(backend))
    w.write_unit(0, 0, v2_content[(0, 0)])
    size = open_storage(loc("c")).total_size()
    good = v2_content[(0, 1)]
    lp = good.topk_logprob.copy()
    lp[3, 7] = np.nextafter(lp[3, 7], np.float16(-np.inf))  # one ulp below a code's value: the row stays sorted
    with pytest.raises(ValueError, match="not format version 2 codes"):
        w.write_unit(0, 1, UnitData(**{**good.arrays(), "topk_logprob": lp}))
    assert w.completed_units() == {(0, 0)}
    assert open_storage(loc("c")).total_size() == size  # not one byte of the unit was written
    w.write_unit(0, 1, good)  # and the unit can still be written
    assert open_cache(loc("c"), allow_unfinished=True).read_unit(0, 1).equals(good)


# ---- format version 3: an exact top-k plus systematic draws from the rest (store/draws.py) ------------------
V3_K, V3_M = 3, 8


def make_v3_manifest(backend: str):
    m = synthetic_manifest(backend=backend, num_samples=301, unit_size=64, epochs=1, num_classes=50, topk=V3_K)
    return m.replace(format_version=3, draws=V3_M)


@pytest.fixture(scope="module")
def v3_content() -> dict[tuple[int, int], UnitData]:
    """Synthetic views whose teacher is a wide synthetic top-20 (rest spread evenly), stored as format 3 rows:
    its exact top-3 plus 8 keyed draws from the rest."""
    from kdcache.teacher_cache.store.draws import draw_uniforms, systematic_draws, with_draws
    from kdcache.teacher_cache.store.topk import topk_to_probs
    from kdcache.teacher_cache.store.units import unit_slots

    wide = synthetic_manifest(num_samples=301, unit_size=64, epochs=1, num_classes=50, topk=20)
    m = make_v3_manifest("zarr")
    out = {}
    for u in range(num_units(m)):
        d = synthetic_unit(wide, 0, u, peak=4.0)
        full = np.log(topk_to_probs(d.topk_logprob, d.topk_class, 50).astype(np.float64))
        a, b = unit_slots(m, u)
        exact = d.topk_class[:, :V3_K]
        drawn = systematic_draws(full, exact, V3_M, draw_uniforms(m.seed, 0, np.arange(a, b)))
        lp, cls = with_draws(d.topk_logprob[:, :V3_K], exact, drawn.astype(exact.dtype))
        out[(0, u)] = UnitData(**{**d.arrays(), "topk_logprob": lp, "topk_class": cls})
    return out


def write_v3(path, backend: str, content) -> None:
    w = create_or_open_writer(path, make_v3_manifest(backend))
    for e, u in sorted(content):
        w.write_unit(e, u, content[(e, u)])
    w.finalize()


@pytest.mark.parametrize("backend", BACKENDS)
def test_format_3_round_trip_of_every_field(loc, backend, v3_content):
    write_v3(loc("c"), backend, v3_content)
    r = open_cache(loc("c"))
    m = r.manifest
    assert (m.format_version, m.topk, m.draws, m.label_width) == (3, V3_K, V3_M, V3_K + V3_M)
    assert r.manifest == make_v3_manifest(backend).replace(created=m.created, epochs_complete=(0,))
    block = r.load_epoch(0)
    assert block.topk_logprob.shape == block.topk_class.shape == (300, V3_K + V3_M)
    assert block.equals(expected_epoch(v3_content, 0))
    assert r.read_unit(0, 4).equals(v3_content[(0, 4)])  # the short last unit
    # the content has teeth: classes drawn several times, and rows drawing many different classes
    drawn = block.topk_class[:, V3_K:]
    assert (np.diff(drawn, axis=1) == 0).any() and max(len(set(row)) for row in drawn.tolist()) >= 5


def test_format_3_content_hash_is_identical_across_backends_and_sees_a_draw(tmp_path, v3_content):
    import uuid

    remote = f"memory://kdc-{uuid.uuid4().hex[:12]}"
    places = [(tmp_path / "z", "zarr"), (tmp_path / "w", "wds"), (f"{remote}/z", "zarr"), (f"{remote}/w", "wds")]
    digests = set()
    for place, backend in places:
        write_v3(place, backend, v3_content)
        digests.add(content_hash(open_cache(place)))
    assert len(digests) == 1
    changed = dict(v3_content)
    cls = v3_content[(0, 2)].topk_class.copy()
    row = int(np.flatnonzero(cls[:, -1] < 49)[0])
    free = [c for c in range(cls[row, -1] + 1, 50) if c not in cls[row, :V3_K]]
    cls[row, -1] = free[0]  # the last draw moves up a class: still sorted, still outside the top-k
    changed[(0, 2)] = UnitData(**{**v3_content[(0, 2)].arrays(), "topk_class": cls})
    write_v3(tmp_path / "changed", "zarr", changed)
    assert content_hash(open_cache(tmp_path / "changed")) not in digests


def test_format_3_stores_the_draws_as_gaps_that_plain_zarr_and_tar_readers_see(tmp_path, v3_content):
    import io
    import tarfile

    import zarr

    from kdcache.teacher_cache import stream_views

    block = expected_epoch(v3_content, 0)
    write_v3(tmp_path / "z", "zarr", v3_content)
    gaps = zarr.open_array(str(tmp_path / "z" / "e00000" / "draw_gap"), mode="r")[:]
    assert gaps.shape == (300, V3_M) and (gaps[:, 1:] >= 0).all()
    np.testing.assert_array_equal(np.cumsum(gaps, axis=1), block.topk_class[:, V3_K:])
    write_v3(tmp_path / "w", "wds", v3_content)
    with tarfile.open(tmp_path / "w" / "e00000" / "u000001.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    np.testing.assert_array_equal(np.load(io.BytesIO(members["e00000u000001.draw_gap.npy"])), gaps[64:128])
    assert json.loads(members["e00000u000001.meta.json"])["format_version"] == 3
    views = list(stream_views(tmp_path / "w"))
    np.testing.assert_array_equal(np.stack([v["topk_class"] for v in views]), block.topk_class)


@pytest.mark.parametrize("backend", BACKENDS)
def test_format_3_writer_refuses_rows_no_build_makes_and_commits_nothing(loc, backend, v3_content):
    w = create_or_open_writer(loc("c"), make_v3_manifest(backend))
    w.write_unit(0, 0, v3_content[(0, 0)])
    size = open_storage(loc("c")).total_size()
    good = v3_content[(0, 1)]
    lp = good.topk_logprob.copy()
    lp[3, V3_K] = np.nextafter(lp[3, V3_K], np.float16(-np.inf))  # a draw's value one ulp off the derived one
    with pytest.raises(ValueError, match="log\\(rest / draws\\)"):
        w.write_unit(0, 1, UnitData(**{**good.arrays(), "topk_logprob": lp}))
    assert w.completed_units() == {(0, 0)}
    assert open_storage(loc("c")).total_size() == size
    w.write_unit(0, 1, good)
    assert open_cache(loc("c"), allow_unfinished=True).read_unit(0, 1).equals(good)
