"""The storage layer under both backends: the same promises on local disk and on fsspec stores."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import fsspec
import pytest

from kdcache.storage import FsspecStorage, LocalStorage, is_url, open_storage
from kdcache.teacher_cache import CacheError


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        yield open_storage(tmp_path / "s")
        return
    if request.param == "s3":  # moto's S3 server on loopback (tests/s3_helpers.py)
        yield open_storage(f"{request.getfixturevalue('s3_bucket')}/s")
        return
    bucket = f"kdc-{uuid.uuid4().hex[:12]}"
    yield open_storage(f"memory://{bucket}/s")
    with contextlib.suppress(FileNotFoundError):  # a test may have deleted everything already
        fsspec.filesystem("memory").rm(f"/{bucket}", recursive=True)


def test_paths_and_urls_open_the_right_storage(tmp_path):
    assert isinstance(open_storage(tmp_path), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    assert open_storage(f"file://{tmp_path}").location == tmp_path
    assert isinstance(open_storage("memory://b/x"), FsspecStorage)
    assert is_url("s3://b/x") and not is_url("/data/x") and not is_url("file:///x")
    with pytest.raises(CacheError, match="Protocol not known"):
        open_storage("nosuchproto://b/x")


def test_write_read_list_delete(storage):
    assert storage.listdir() == [] and not storage.exists("a/b.json")
    storage.write("a/b.json", b"1")
    storage.write("a/b.json", b"22")  # replaces
    storage.write("a/c/d", b"333")
    storage.write("top", b"4")
    assert storage.read("a/b.json") == b"22"
    assert storage.read_many(["top", "a/c/d"]) == [b"4", b"333"]
    assert sorted(storage.listdir()) == ["a", "top"]
    assert sorted(storage.listdir("a")) == ["b.json", "c"]
    assert storage.listdir("nothing") == []
    assert storage.total_size() == 2 + 3 + 1
    storage.delete("top")
    storage.delete("top")  # a missing object is not an error
    assert sorted(storage.listdir()) == ["a"]
    storage.delete_all()
    assert not storage.exists("a/b.json")


def test_write_new_is_first_writer_wins(storage):
    assert storage.write_new("h.json", b"first")
    assert not storage.write_new("h.json", b"second")
    assert storage.read("h.json") == b"first"


def test_a_missing_object_names_its_key(storage):
    storage.write("x", b"1")
    with pytest.raises(FileNotFoundError) as info:
        storage.read_many(["x", "e00000/f/c/3"])
    assert info.value.key == "e00000/f/c/3"
    assert info.value.filename == storage.where("e00000/f/c/3")
    with pytest.raises(FileNotFoundError):
        storage.read("nope")


def test_child_and_where(storage):
    child = storage.child("k1")
    child.write("v", b"1")
    assert storage.read("k1/v") == b"1"
    assert child.where("v") == storage.where("k1/v")
    if isinstance(storage, LocalStorage):
        assert Path(child.where("v")).is_file()
