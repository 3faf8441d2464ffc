"""``kdcache preview``: render slots of an epoch as a picture grid, PNGs, or JSON lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
from PIL import Image

from kdcache.cli.common import fail_cleanly, parse_slots


@click.command()
@click.option(
    "--data",
    "data",
    required=True,
    help="What `build --data` takes: an ImageFolder root (one sub-folder per class) or WebDataset image shards "
    "('train-{000000..000146}.tar', .cls labels).",
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
@click.option(
    "--captions/--no-captions",
    default=True,
    show_default=True,
    help="Caption each view of a .png grid with its slot, class and mixing weight lam (views of small images are "
    "enlarged to make room).",
)
@fail_cleanly
def preview(
    data: str,
    recipe: str,
    seed: int,
    epoch: int,
    slots: str,
    image_size: int | None,
    out: Path | None,
    as_json: bool,
    captions: bool,
) -> None:
    """Render views exactly as `build` will show them to the teacher.

    Each slot of the epoch is one output view; slots 2i and 2i+1 are a mixing pair of samples A and B:
    slot 2i shows mix(A, B) (lam of A), slot 2i+1 mix(B, A). The grid has an even number of columns
    and fills it row by row in slot order, so each pair sits in two adjacent columns of one row.
    Captions give the slot, the class of the view's own sample (ImageNet names for WordNet-id folders)
    and lam, with the partner's class.
    """
    # Imported here, not at the top: `kdcache show` imports this module's tile helpers without torch.
    from kdcache.data import DataSourceError
    from kdcache.recipe import RecipeError, load_recipe
    from kdcache.views import ViewEngine
    from kdcache.views.params import to_json

    try:
        a, b = parse_slots(slots)
    except click.BadParameter as e:  # name the option in the message, as click does for its own checks
        raise click.BadParameter(e.message, param_hint="--slots") from e
    try:
        rec = load_recipe(recipe)
        if image_size is not None:
            rec = rec.replace_augment(image_size=image_size)
        from kdcache.data.wds_source import open_source

        src = open_source(data)  # what `build --data` opens: an ImageFolder or WebDataset shards
    except (RecipeError, DataSourceError) as e:
        raise click.ClickException(str(e)) from e
    from kdcache.models.class_names import ClassNames

    names = ClassNames.of_folders(src.classes)
    engine = ViewEngine(src, rec.augment, seed)
    plan = engine.plan(epoch)
    if b > plan.num_slots:
        raise click.BadParameter(f"epoch has {plan.num_slots} slots; {slots} is out of range", param_hint="--slots")
    views: list[tuple[int, np.ndarray]] = []
    captions_of: dict[int, list[str]] = {}
    for pair in range(a // 2, (b + 1) // 2):
        r = engine.render_pair(epoch, pair)
        for k, slot in enumerate(r.slots):
            if not a <= slot < b:
                continue
            views.append((slot, r.images[k]))
            partner = 1 - k
            lam = float(r.params[k].mix.lam)
            own, other = names.name(int(r.labels[k])), names.name(int(r.labels[partner]))
            captions_of[slot] = [f"slot {slot}: {own}", f"lam {lam:.2f}" + (f" + {other}" if lam < 1 else "")]
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "epoch": epoch,
                            "slot": slot,
                            "sample_id": int(r.sample_ids[k]),
                            "path": src.name(int(r.sample_ids[k])),
                            "repeat": int(r.repeats[k]),
                            "label": int(r.labels[k]),
                            "class": src.classes[int(r.labels[k])],
                            "class_name": own,
                            "partner_class_name": other,
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
        tiles = [captioned_tile(v, captions_of[slot]) if captions else v for slot, v in views]
        Image.fromarray(_grid(tiles)).save(out)
        click.echo(f"wrote {out} ({len(views)} views)", err=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for slot, v in views:
            Image.fromarray(v).save(out / f"e{epoch:04d}_s{slot:08d}.png")
        click.echo(f"wrote {len(views)} PNGs to {out}", err=True)


MIN_TILE = 160  # small views are enlarged (nearest) so that the captions fit
LINE_HEIGHT = 12


def tile_side(image_size: int) -> int:
    """The picture's side in a captioned tile: the view enlarged by a whole factor to >= MIN_TILE px."""
    return image_size * math.ceil(MIN_TILE / image_size)


def captioned_tile(view: np.ndarray, lines: list[str], n_lines: int | None = None) -> np.ndarray:
    """The view (enlarged, nearest) above ``n_lines`` lines of black text on white."""
    from PIL import ImageDraw

    side = tile_side(view.shape[0])
    n = len(lines) if n_lines is None else n_lines
    tile = Image.new("RGB", (side, side + n * LINE_HEIGHT + 4), "white")
    tile.paste(Image.fromarray(view).resize((side, side), Image.NEAREST), (0, 0))
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(lines[:n]):
        while len(line) > 1 and draw.textlength(line) > side - 4:  # cut what would run into the next tile
            line = line[:-1]
        draw.text((2, side + 2 + i * LINE_HEIGHT), line, fill="black")
    return np.asarray(tile)


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
