"""ImageFolder source: stable sorted ids, a fingerprint that notices changes, clear errors, RGB loading."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from kdcache.data import DataSourceError, ImageFolderSource, to_rgb


def test_ids_are_sorted_relative_paths(image_folder):
    src = image_folder.source()
    names = [src.name(i) for i in range(len(src))]
    assert names == sorted(image_folder.files)  # every written image, nothing else, in sorted order
    assert len(src) == 13
    assert "flower/nested/f4.png" in names  # images in sub-folders of a class count
    assert not any("hidden" in n or n.endswith(".txt") for n in names)
    assert src.classes == image_folder.classes == ["china", "digits", "flower"]
    for i, n in enumerate(names):
        assert src.label(i) == src.classes.index(n.split("/")[0])
        assert src.path(i) == image_folder.root / n


def test_ids_and_fingerprint_are_stable_across_instances(image_folder):
    a, b = image_folder.source(), ImageFolderSource(str(image_folder.root))
    assert [a.name(i) for i in range(len(a))] == [b.name(i) for i in range(len(b))]
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0


def test_ids_do_not_depend_on_directory_listing_order(fresh_image_folder, monkeypatch):
    """os.scandir/os.walk order is filesystem-dependent; the ids must not be."""
    root = fresh_image_folder.root
    want = ImageFolderSource(root)
    real_walk, real_scandir = os.walk, os.scandir

    def walk_reversed(*args, **kwargs):
        for dirpath, dirnames, filenames in real_walk(*args, **kwargs):
            dirnames.reverse()
            yield dirpath, dirnames, filenames[::-1]

    class Listing:  # what os.walk needs from scandir(): a closable iterator
        def __init__(self, entries):
            self._it = iter(entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            return next(self._it)

    def scandir_reversed(path="."):
        with real_scandir(path) as it:
            return Listing(list(it)[::-1])

    monkeypatch.setattr(os, "walk", walk_reversed)
    monkeypatch.setattr(os, "scandir", scandir_reversed)
    got = ImageFolderSource(root)
    assert [got.name(i) for i in range(len(got))] == [want.name(i) for i in range(len(want))]
    assert [got.label(i) for i in range(len(got))] == [want.label(i) for i in range(len(want))]
    assert got.fingerprint == want.fingerprint


def test_fingerprint_changes_on_rename(fresh_image_folder):
    root = fresh_image_folder.root
    before = ImageFolderSource(root).fingerprint
    (root / "digits" / "d0.png").rename(root / "digits" / "d0_renamed.png")
    assert ImageFolderSource(root).fingerprint != before


def test_fingerprint_changes_on_move_between_classes(fresh_image_folder):
    root = fresh_image_folder.root
    before = ImageFolderSource(root).fingerprint
    (root / "digits" / "d1.png").rename(root / "china" / "d1.png")
    assert ImageFolderSource(root).fingerprint != before


def test_fingerprint_changes_on_size_change(fresh_image_folder):
    root = fresh_image_folder.root
    before = ImageFolderSource(root).fingerprint
    path = root / "flower" / "f3.bmp"
    Image.open(path).convert("RGB").resize((51, 50)).save(path)
    assert ImageFolderSource(root).fingerprint != before


def test_fingerprint_changes_on_added_or_removed_image(fresh_image_folder):
    root = fresh_image_folder.root
    before = ImageFolderSource(root).fingerprint
    (root / "china" / "c1_portrait.png").unlink()
    removed = ImageFolderSource(root).fingerprint
    assert removed != before
    Image.new("RGB", (9, 9)).save(root / "china" / "new.png")
    assert ImageFolderSource(root).fingerprint not in (before, removed)


def test_fingerprint_ignores_untouched_metadata(fresh_image_folder):
    root = fresh_image_folder.root
    before = ImageFolderSource(root).fingerprint
    os.utime(root / "digits" / "d2.png", (1, 1))  # a touch does not change content or size
    (root / "flower" / "readme.md").write_text("still not an image")
    assert ImageFolderSource(root).fingerprint == before


def test_missing_directory_raises(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")


def test_file_instead_of_directory_raises(tmp_path):
    f = tmp_path / "file.png"
    Image.new("RGB", (4, 4)).save(f)
    with pytest.raises(DataSourceError, match="not a directory"):
        ImageFolderSource(f)


def test_root_without_class_folders_raises(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(DataSourceError, match="no class folders"):
        ImageFolderSource(tmp_path)


def test_empty_class_folder_raises_naming_it(fresh_image_folder):
    root = fresh_image_folder.root
    (root / "empty_class").mkdir()
    (root / "only_text").mkdir()
    (root / "only_text" / "a.txt").write_text("x")
    with pytest.raises(DataSourceError) as err:
        ImageFolderSource(root)
    msg = str(err.value)
    assert "empty_class" in msg and "only_text" in msg and str(root) in msg
    assert "no images" in msg


def test_hidden_directories_are_not_classes(fresh_image_folder):
    root = fresh_image_folder.root
    (root / ".cache").mkdir()
    src = ImageFolderSource(root)
    assert src.classes == ["china", "digits", "flower"]


def test_unreadable_image_raises_data_source_error(fresh_image_folder):
    root = fresh_image_folder.root
    (root / "china" / "broken.jpg").write_bytes(b"this is not a jpeg")
    src = ImageFolderSource(root)
    i = [src.name(k) for k in range(len(src))].index("china/broken.jpg")
    with pytest.raises(DataSourceError, match=r"broken\.jpg"):
        src.open(i)


def test_truncated_image_fails_with_its_name_when_rendered(fresh_image_folder):
    """The header opens fine; decoding fails later, and must still say which file."""
    from kdcache.recipe import AugmentConfig
    from kdcache.views import ViewEngine

    root = fresh_image_folder.root
    path = root / "china" / "c0_landscape.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    src = ImageFolderSource(root)
    sid = [src.name(k) for k in range(len(src))].index("china/c0_landscape.jpg")
    engine = ViewEngine(src, AugmentConfig(image_size=32, repeats=1), 0)
    epoch = next(e for e in range(20) if sid in engine.plan(e).sample_ids)  # odd N: one sample sits out
    slot = int(np.flatnonzero(engine.plan(epoch).sample_ids == sid)[0])
    with pytest.raises(DataSourceError, match=r"china/c0_landscape\.jpg"):
        engine.render_pair(epoch, slot // 2)


def test_data_source_error_is_a_value_error():
    assert issubclass(DataSourceError, ValueError)


# ---- modes -> RGB -----------------------------------------------------------------------------


def test_all_modes_load_to_exact_rgb(image_folder):
    src = image_folder.source()
    modes = {}
    for i in range(len(src)):
        name = src.name(i)
        mode, size, expected = image_folder.files[name]
        raw = src.open(i)
        assert raw.mode == mode and raw.size == size, name
        rgb = to_rgb(raw)
        assert rgb.mode == "RGB" and rgb.size == size
        arr = np.asarray(rgb)
        modes[mode] = name
        if mode == "CMYK":
            # JPEG is lossy: close to the RGB that was written, not exact.
            assert np.abs(arr.astype(int) - expected.astype(int)).mean() < 4, name
        elif expected is not None:
            np.testing.assert_array_equal(arr, expected, err_msg=name)
    assert set(modes) == {"RGB", "L", "P", "RGBA", "CMYK", "I;16"}


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.array([[0, 255, 256, 0x1234, 0xFFFF]], dtype=np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    out = np.asarray(to_rgb(im))
    assert out[0, :, 0].tolist() == [0, 0, 1, 0x12, 0xFF]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_alpha_is_dropped_not_composited():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = [[0, 64], [128, 255]]
    out = np.asarray(to_rgb(Image.fromarray(rgba, mode="RGBA")))
    assert (out == [200, 100, 50]).all()


def test_palette_with_transparency_keeps_palette_colours():
    p = Image.new("P", (3, 1))
    p.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * (768 - 9))
    p.putdata([0, 1, 2])
    p.info["transparency"] = 1
    out = np.asarray(to_rgb(p))
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60], [70, 80, 90]]]


def test_rgb_passes_through_loaded():
    im = Image.new("RGB", (3, 3), (1, 2, 3))
    assert to_rgb(im) is im
