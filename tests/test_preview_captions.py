"""`kdcache preview`: captions on the grid (slot, class, lam), help that says how pairs sit in the grid, and
--data taking what `build --data` takes (WebDataset shards too)."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
from build_helpers import run_cli
from PIL import Image

from kdcache.cli.preview import LINE_HEIGHT
from kdcache.testing.fixtures import write_dataset

SIZE = 32


def _grid(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_grid_tiles_carry_slot_class_and_lam_captions(tmp_path):
    data = write_dataset(tmp_path / "data", ["n02124075", "bee"], per_class=3)
    rows = [
        json.loads(x)
        for x in run_cli("preview", "--data", str(data), "--slots", "0:4", "--image-size", str(SIZE), "--json")
        .stdout.strip()
        .splitlines()
    ]
    assert {r["class"] for r in rows} <= {"n02124075", "bee"}
    assert {r["class_name"] for r in rows} <= {"Egyptian cat", "bee"}  # WordNet folders read as ImageNet names
    png = tmp_path / "grid.png"
    run_cli("preview", "--data", str(data), "--slots", "0:4", "--image-size", str(SIZE), "--out", str(png))
    side = SIZE * math.ceil(160 / SIZE)  # small views are enlarged to make room for the captions
    tile_h = side + 2 * LINE_HEIGHT + 4
    grid = _grid(png)
    assert grid.shape == (2 + 2 * (tile_h + 2), 2 + 2 * (side + 2), 3)  # 4 views: pairs side by side, 2 x 2
    caption = grid[2 + side : 2 + tile_h, 2 : 2 + side]
    assert (caption < 128).any()  # text under the picture
    # the picture is the view (the lossless PNG of the same slot), enlarged
    views = tmp_path / "views"
    run_cli("preview", "--data", str(data), "--slots", "0:1", "--image-size", str(SIZE), "--out", str(views))
    view0 = np.asarray(Image.open(next(views.iterdir())))
    big = np.asarray(Image.fromarray(view0).resize((side, side), Image.NEAREST))
    np.testing.assert_array_equal(grid[2 : 2 + side, 2 : 2 + side], big)
    # --no-captions: the raw views, as before
    run_cli(
        "preview", "--data", str(data), "--slots", "0:4", "--image-size", str(SIZE), "--out", str(png), "--no-captions"
    )
    assert _grid(png).shape == (2 + 2 * (SIZE + 2), 2 + 2 * (SIZE + 2), 3)


def test_help_says_pairs_are_adjacent_columns():
    text = " ".join(run_cli("preview", "--help").stdout.split())
    assert "adjacent columns" in text and "row pair" not in text
    assert "WebDataset" in text


def _write_shard(path, data_root) -> None:
    """The ImageFolder's images as one WebDataset shard with .cls labels (sorted folder index)."""
    classes = sorted(p.name for p in data_root.iterdir())
    with tarfile.open(path, "w") as tar:
        for label, c in enumerate(classes):
            for f in sorted((data_root / c).iterdir()):
                for name, payload in (
                    (f"{c}_{f.stem}.jpg", f.read_bytes()),
                    (f"{c}_{f.stem}.cls", str(label).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def test_data_takes_webdataset_shards_like_build(tmp_path):
    data = write_dataset(tmp_path / "data", ["ant", "bee"], per_class=3)
    shard = tmp_path / "train-000000.tar"
    _write_shard(shard, data)
    r = run_cli("preview", "--data", str(shard), "--slots", "0:4", "--image-size", str(SIZE), "--json")
    rows = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x["slot"] for x in rows] == [0, 1, 2, 3] and {x["class"] for x in rows} <= {"0", "1"}
    png = tmp_path / "g.png"
    run_cli("preview", "--data", str(tmp_path / "train-{000000..000000}.tar"), "--slots", "0:2", "--out", str(png))
    assert png.is_file()
