"""``kdcache preview``: render slots of an epoch as a picture grid, PNGs, or JSON lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
from PIL import Image

from kdcache.cli.common import fail_cleanly, parse_slots
from kdcache.data import DataSourceError, ImageFolderSource
from kdcache.recipe import RecipeError, load_recipe
from kdcache.views import ViewEngine
from kdcache.views.params import to_json


@click.command()
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(path_type=Path),
    help="ImageFolder root (one sub-folder per class).",
)
@click.option("--recipe", default="seed", show_default=True, help="Preset name or recipe YAML file.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="View seed.")
@click.option("--epoch", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--slots", default="0:16", show_default=True, help="Half-open slot range A:B of the epoch.")
@click.option("--image-size", type=click.IntRange(8, 4096), help="Override the recipe's image size.")
@click.option(
    "--out", type=click.Path(path_type=Path), help="A .png for one grid, or a directory for one lossless PNG per view."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per view on stdout.")
@fail_cleanly
def preview(
    data: Path, recipe: str, seed: int, epoch: int, slots: str, image_size: int | None, out: Path | None, as_json: bool
) -> None:
    """Render views exactly as `build` will show them to the teacher.

    Each slot of the epoch is one output view; slots (2i, 2i+1) are a mixing pair. The grid shows
    them in slot order, so each row pair shows mix(A, B) and mix(B, A).
    """
    try:
        a, b = parse_slots(slots)
    except click.BadParameter as e:  # name the option in the message, as click does for its own checks
        raise click.BadParameter(e.message, param_hint="--slots") from e
    try:
        rec = load_recipe(recipe)
        if image_size is not None:
            rec = rec.replace_augment(image_size=image_size)
        src = ImageFolderSource(data)
    except (RecipeError, DataSourceError) as e:
        raise click.ClickException(str(e)) from e
    engine = ViewEngine(src, rec.augment, seed)
    plan = engine.plan(epoch)
    if b > plan.num_slots:
        raise click.BadParameter(f"epoch has {plan.num_slots} slots; {slots} is out of range", param_hint="--slots")
    views: list[tuple[int, np.ndarray]] = []
    for pair in range(a // 2, (b + 1) // 2):
        r = engine.render_pair(epoch, pair)
        for k, slot in enumerate(r.slots):
            if not a <= slot < b:
                continue
            views.append((slot, r.images[k]))
            if as_json:
                partner = 1 - k
                click.echo(
                    json.dumps(
                        {
                            "epoch": epoch,
                            "slot": slot,
                            "sample_id": int(r.sample_ids[k]),
                            "path": src.name(int(r.sample_ids[k])),
                            "repeat": int(r.repeats[k]),
                            "label": int(r.labels[k]),
                            "partner_slot": r.slots[partner],
                            "partner_sample_id": int(r.sample_ids[partner]),
                            "lam": r.params[k].mix.lam,
                            "params": to_json(r.params[k]),
                            "digest": f"{int(r.digests[k]):016x}",
                        }
                    )
                )
    if out is None:
        if not as_json:
            click.echo(f"rendered {len(views)} views; pass --out grid.png or --out DIR/ to save them", err=True)
        return
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_grid([v for _, v in views])).save(out)
        click.echo(f"wrote {out} ({len(views)} views)", err=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for slot, v in views:
            Image.fromarray(v).save(out / f"e{epoch:04d}_s{slot:08d}.png")
        click.echo(f"wrote {len(views)} PNGs to {out}", err=True)


def _grid(views: list[np.ndarray], pad: int = 2) -> np.ndarray:
    n = len(views)
    cols = 2 * max(1, math.ceil(math.sqrt(n) / 2))  # even, so mixing pairs sit side by side
    rows = math.ceil(n / cols)
    h, w = views[0].shape[:2]  # equal tiles; not square for `kdcache show --out` (caption below)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, v in enumerate(views):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = v
    return grid
