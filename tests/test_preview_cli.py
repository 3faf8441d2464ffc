"""`kdcache preview`: JSON lines, a picture grid, lossless per-view PNGs, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdcache.cli.main import cli
from kdcache.views.params import to_json
from kdcache.views.render import digest

SIZE = 40
SEED = 5
EPOCH = 1


def run(*args: str):
    return CliRunner().invoke(cli, ["preview", *args], catch_exceptions=False)


def run_ok(image_folder, *args: str):
    result = run("--data", str(image_folder.root), "--image-size", str(SIZE), "--seed", str(SEED), *args)
    assert result.exit_code == 0, result.output
    return result


def json_lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_json_lines_describe_each_view(image_folder, make_engine):
    # 3:9 starts and ends in the middle of a pair: slots 3..8 come from pairs 1..4.
    result = run_ok(image_folder, "--epoch", str(EPOCH), "--slots", "3:9", "--json")
    rows = json_lines(result)
    assert [r["slot"] for r in rows] == list(range(3, 9))

    engine = make_engine(seed=SEED, image_size=SIZE)
    plan = engine.plan(EPOCH)
    src = engine.source
    for row in rows:
        slot = row["slot"]
        assert set(row) >= {"epoch", "slot", "sample_id", "repeat", "params", "lam", "digest"}
        assert row["epoch"] == EPOCH
        assert row["sample_id"] == int(plan.sample_ids[slot])
        assert row["repeat"] == int(plan.repeats[slot])
        assert row["path"] == src.name(row["sample_id"])
        assert row["label"] == src.label(row["sample_id"])
        assert row["partner_slot"] == slot ^ 1
        assert row["partner_sample_id"] == int(plan.sample_ids[slot ^ 1])
        r = engine.render_pair(EPOCH, slot // 2)
        k = slot % 2
        assert row["params"] == json.loads(json.dumps(to_json(r.params[k])))
        assert row["lam"] == r.params[k].mix.lam == row["params"]["mix"]["lam"]
        assert row["digest"] == f"{int(r.digests[k]):016x}"
    # Both outputs of a pair report the same mix.
    by_slot = {r["slot"]: r for r in rows}
    for s in (4, 6):
        assert by_slot[s]["params"]["mix"] == by_slot[s + 1]["params"]["mix"]


def test_out_dir_writes_lossless_pngs_matching_the_digests(image_folder, tmp_path):
    out = tmp_path / "views"
    result = run_ok(image_folder, "--slots", "0:6", "--json", "--out", str(out))
    rows = json_lines(result)
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"e0000_s{s:08d}.png" for s in range(6)]
    for row, f in zip(rows, files, strict=True):
        with Image.open(f) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
            pixels = np.asarray(im)
        assert f"{digest(pixels):016x}" == row["digest"], f.name  # pixel-exact
    assert "wrote 6 PNGs" in result.stderr


@pytest.mark.parametrize(
    ("slots", "rows", "cols"),
    [
        ("0:6", 2, 4),  # 6 views: 4 columns (even, so pairs sit side by side), 2 rows
        ("0:12", 3, 4),
        ("2:3", 1, 2),  # a single view still gets a pair-wide grid
    ],
)
def test_out_png_writes_a_grid(image_folder, tmp_path, slots, rows, cols):
    views_dir, grid_path = tmp_path / "views", tmp_path / "sub" / "grid.png"
    run_ok(image_folder, "--slots", slots, "--out", str(views_dir))
    # the raw views (captions, on by default, are tested in test_preview_captions.py)
    result = run_ok(image_folder, "--slots", slots, "--out", str(grid_path), "--no-captions")
    assert "wrote" in result.stderr
    pad = 2
    with Image.open(grid_path) as im:
        assert im.format == "PNG"
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape == (rows * (SIZE + pad) + pad, cols * (SIZE + pad) + pad, 3)
    # The tiles are the views, in slot order, row by row.
    views = [np.asarray(Image.open(f)) for f in sorted(views_dir.iterdir())]
    for i, v in enumerate(views):
        r, c = divmod(i, cols)
        y, x = pad + r * (SIZE + pad), pad + c * (SIZE + pad)
        np.testing.assert_array_equal(grid[y : y + SIZE, x : x + SIZE], v)


def test_without_output_options_it_says_how_to_save(image_folder):
    result = run_ok(image_folder, "--slots", "0:2")
    assert result.stdout == ""
    assert "rendered 2 views" in result.stderr and "--out" in result.stderr


@pytest.mark.parametrize("slots", ["abc", "5:3", "3:3", "-1:4", "1:2:3", "0:", ":4", "0:13", "0:1000"])
def test_bad_slots_give_a_clear_error(image_folder, slots):
    # 13 images -> 12 slots, so 0:13 is out of range.
    result = run("--data", str(image_folder.root), "--image-size", str(SIZE), f"--slots={slots}")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Invalid value for" in result.output and "--slots" in result.output
    assert "A:B" in result.output or "A < B" in result.output or "out of range" in result.output


def test_missing_data_dir_is_a_clean_error(tmp_path):
    result = run("--data", str(tmp_path / "missing"), "--slots", "0:2")
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_unknown_recipe_is_a_clean_error(image_folder):
    result = run("--data", str(image_folder.root), "--recipe", "no-such-preset")
    assert result.exit_code == 1
    assert "no-such-preset" in result.output and "seed" in result.output


def test_recipe_file_is_used(image_folder, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: plain\naugment:\n  auto_augment: null\n  mixup_alpha: 0.0\n  hflip: 0.0\n")
    result = run_ok(image_folder, "--recipe", str(recipe), "--slots", "0:8", "--json")
    rows = json_lines(result)
    assert len(rows) == 8
    for row in rows:
        assert row["params"]["rand_augment"] == []
        assert row["params"]["hflip"] is False
        assert row["params"]["mix"]["mode"] == "cutmix"
