"""``kdcache show``: the stored record of individual views, decoded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from kdcache.cli.common import fail_cleanly, parse_slots
from kdcache.cli.preview import LINE_HEIGHT, _grid, captioned_tile, tile_side


@click.command()
@click.argument("cache", metavar="CACHE")
@click.option("--epoch", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--slots", default="0:8", show_default=True, help="Half-open slot range A:B of the epoch.")
@click.option("--data", help="Where the images are now, to show sample paths (default: the recorded source).")
@click.option(
    "--teacher",
    help="Whose top-k to show: a teacher layer's name or model [default: the cache's first]; with --dense, "
    "T1,T2 or T1:0.7,T2:0.3 gives the ensemble's distribution as `train --teacher` uses it.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per view.")
@click.option(
    "--dense",
    is_flag=True,
    help='Add each view\'s full distribution as `train` uses it ("probs", one value per class) to --json.',
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw the views (re-rendered from their stored params) with the teacher's top-3 into this PNG.",
)
@fail_cleanly
def show(
    cache: str,
    epoch: int,
    slots: str,
    data: str | None,
    teacher: str | None,
    as_json: bool,
    dense: bool,
    out: Path | None,
) -> None:
    """Print what CACHE stores for slots A:B of an epoch: sample, repeat, view params, digest and the
    teacher's top-k classes with probabilities."""
    from kdcache.registry.lookup import resolve_cache_arg
    from kdcache.teacher_cache.store import open_layer, unit_slots

    a, b = parse_slots(slots)
    cache = resolve_cache_arg(cache, finished=False)
    ensemble = None  # the chosen teachers, when --teacher names several
    if teacher is not None and "," in teacher:
        from kdcache.student.teachers import select_teachers
        from kdcache.teacher_cache.store import open_cache

        ensemble = select_teachers(open_cache(cache, allow_unfinished=True), teacher)
        if not dense:
            raise click.BadParameter(
                "several teachers are shown as one distribution: add --json --dense", param_hint="--teacher"
            )
        reader = ensemble[0].reader
    else:
        reader = open_layer(cache, teacher, allow_unfinished=True)
    m = reader.manifest
    if b > m.num_slots:
        raise click.BadParameter(f"an epoch has {m.num_slots} slots; {slots} is out of range", param_hint="--slots")
    if epoch >= m.epochs_planned:
        done = ", ".join(map(str, sorted(reader.epochs_complete))) or "none yet"
        raise click.BadParameter(
            f"the cache has epochs 0..{m.epochs_planned - 1} (complete: {done}); got {epoch}", param_hint="--epoch"
        )
    if out is not None and (a % 2 or b % 2):  # a pair renders from both its stored records
        raise click.BadParameter(
            "--out draws whole mixing pairs: start and end the range at even slots", param_hint="--slots"
        )
    if dense and not as_json:
        raise click.BadParameter("--dense adds to the JSON output: pass --json too", param_hint="--dense")
    names = _sample_names(m, data)
    from kdcache.models.class_names import ClassNames

    labels = ClassNames.of(m.class_names, m.num_classes)  # "Egyptian cat" beside n02124075
    drawn: list[tuple[int, np.ndarray, dict[str, Any]]] = []  # (slot, stored record, view) for --out
    for u in range(a // m.unit_size, (b - 1) // m.unit_size + 1):
        start = unit_slots(m, u)[0]
        rows = reader.read_unit(epoch, u)
        lo, hi = max(a, start), min(b, start + rows.num_views)
        probs = None
        if dense and ensemble is not None:
            # the first chosen teacher's rows are ``rows`` already (reader is its layer)
            parts = [(rows if t.reader is reader else t.reader.read_unit(epoch, u), t.weight) for t in ensemble]
            probs = ensemble_targets(
                [(r.topk_logprob[lo - start : hi - start], r.topk_class[lo - start : hi - start], w) for r, w in parts],
                m.num_classes,
            )
        elif dense:
            probs = training_targets(
                rows.topk_logprob[lo - start : hi - start], rows.topk_class[lo - start : hi - start], m.num_classes
            )
        for slot in range(lo, hi):
            view = describe_view(m, epoch, slot, rows, slot - start, names, labels)
            if probs is not None:
                view["probs"] = probs[slot - lo].tolist()
            click.echo(json.dumps(view) if as_json else _text(view))
            if out is not None:
                drawn.append((slot, rows.params[slot - start], view))
    if out is not None:
        draw_views(m, epoch, drawn, data, out)
        click.echo(f"wrote {out} ({len(drawn)} views)", err=True)


def training_targets(topk_logprob: np.ndarray, topk_class: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (V, C): the distribution `train` uses for these rows, by the trainer's own code."""
    import torch

    from kdcache.student.targets import TeacherTarget

    target = TeacherTarget.from_topk(torch.from_numpy(topk_logprob), torch.from_numpy(topk_class), num_classes)
    return target.log_probs.exp().numpy()


def ensemble_targets(parts: list[tuple[np.ndarray, np.ndarray, float]], num_classes: int) -> np.ndarray:
    """float32 (V, C): several teachers' rows (log-probs, classes, weight) mixed as `train --teacher T1,T2`
    mixes them, by the trainer's own code."""
    import torch

    from kdcache.student.targets import TeacherTarget

    lp = torch.from_numpy(np.concatenate([p[0] for p in parts], axis=1))
    cls = torch.from_numpy(np.concatenate([p[1].astype(np.int64) for p in parts], axis=1))
    layers = tuple((p[0].shape[1], p[2]) for p in parts)
    return TeacherTarget.from_topk_mixture(lp, cls, num_classes, layers).log_probs.exp().numpy()


CAPTION_LINES = 4  # top-3 classes + the mass outside the stored top-k


def tile_size(image_size: int) -> tuple[int, int]:
    """(height, width) of one annotated view in the --out grid."""
    side = tile_side(image_size)
    return side + CAPTION_LINES * LINE_HEIGHT + 4, side


def draw_views(
    m: Any, epoch: int, views: list[tuple[int, np.ndarray, dict[str, Any]]], data: str | None, out: Path
) -> None:
    """Re-render each view from its stored record (the pixels the teacher saw) and caption it."""
    from PIL import Image

    from kdcache.views.replay import open_replay

    if not views:
        raise click.ClickException("no views in the slot range to draw")
    engine = open_replay(m, data)
    by_pair: dict[int, np.ndarray] = {}
    tiles = []
    for slot, _, view in views:
        pair = slot // 2
        if pair not in by_pair:  # both views of a pair render together, from the pair's two stored records
            records = np.stack([r for s, r, _ in views if s // 2 == pair])
            by_pair[pair] = engine.render_pair(epoch, pair, records).images
        # the readable name, cut to leave room for the class index and the probability
        lines = [f"{t.get('label', t['name'])[:15]} ({t['class']}) {t['prob']:.3f}" for t in view["topk"][:3]]
        stored = f"top-{len(view['topk'])}" + (f"+{len(view['tail'])}" if view.get("tail") else "")
        stored += f"+{sum(d['count'] for d in view['draws'])} draws" if view.get("draws") else ""
        lines.append(f"outside {stored}: {view['other_mass']:.3f}")
        tiles.append(captioned_tile(by_pair[pair][slot % 2], lines, CAPTION_LINES))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grid(tiles)).save(out)


def describe_view(m: Any, epoch: int, slot: int, rows: Any, i: int, names: Any, labels: Any = None) -> dict[str, Any]:
    """One view as JSON. ``labels`` (a ClassNames) adds each class's readable name ("label") and the text
    form "Egyptian cat (n02124075, 285)" ("shown"); "name" stays the name the manifest records."""
    from kdcache.views.params import ParamDecodeError, decode, n_ops_for_width, to_json

    sample = int(rows.sample_id[i])
    try:
        params: Any = to_json(decode(rows.params[i], n_ops_for_width(m.record_width), m.image_size))
    except ParamDecodeError as e:
        params = {"error": str(e), "raw": rows.params[i].tolist()}
    probs = np.exp(rows.topk_logprob[i].astype(np.float64))
    entries = [
        {
            "class": int(c),
            "name": m.class_names[int(c)],
            **({"label": labels.name(int(c)), "shown": labels.describe(int(c))} if labels is not None else {}),
            "prob": round(float(p), 6),
        }
        for c, p in zip(rows.topk_class[i], probs, strict=True)
    ]
    return {
        "epoch": epoch,
        "slot": slot,
        "pair": slot // 2,
        "sample_id": sample,
        "path": names(sample) if names else None,
        "repeat": int(rows.repeat[i]),
        "params": params,
        "digest": f"{int(rows.digest[i]):016x}",
        "topk": entries[: m.topk],
        # format 2: the next classes, their probabilities decoded from 4-bit codes (docs/cache-format.md)
        **({"tail": entries[m.topk :]} if m.tail_classes else {}),
        # format 3: the classes drawn from the rest, with how often (each draw carries rest / M)
        **({"draws": _drawn(entries[m.topk :])} if m.draws else {}),
        "other_mass": round(max(0.0, 1.0 - float(probs.sum())), 6),
    }


def _drawn(columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Format 3's draw columns, one entry per drawn class: its count and the mass the draws give it."""
    out: dict[int, dict[str, Any]] = {}
    for c in columns:
        e = out.setdefault(c["class"], {**{k: v for k, v in c.items() if k != "prob"}, "count": 0, "prob": 0.0})
        e["count"] += 1
        e["prob"] = round(e["prob"] + c["prob"], 6)
    return sorted(out.values(), key=lambda e: (-e["count"], e["class"]))


def _sample_names(m: Any, data: str | None) -> Any:
    """sample id -> dataset-relative path, if the images are reachable and unchanged; else None."""
    spec = data or m.dataset.get("source")
    if not spec:
        return None
    try:
        from kdcache.data.wds_source import open_source

        source = open_source(spec)
    except Exception as e:  # any failure only costs the paths, not the command
        click.echo(f"note: cannot open the dataset at {spec} ({e}); showing sample ids only", err=True)
        return None
    if source.fingerprint != m.dataset["fingerprint"]:
        click.echo(f"note: {spec} is not the dataset the cache was built from; showing sample ids only", err=True)
        return None
    return source.name


def _text(v: dict[str, Any]) -> str:
    p = v["params"]
    head = f"epoch {v['epoch']} slot {v['slot']} (pair {v['pair']}): sample {v['sample_id']}"
    head += f" {v['path']}" if v["path"] else ""
    lines = [f"{head}, repeat {v['repeat']}, digest {v['digest']}"]
    if "error" in p:
        lines.append(f"  params   undecodable: {p['error']} {p['raw']}")
    else:
        c = p["crop"]
        ops = ", ".join(
            f"{o['op']}{'' if o['applied'] else '(skipped)'} m={o['magnitude']:.3f}{'-' if o['negate'] else ''}"
            for o in p["rand_augment"]
        )
        lines.append(
            f"  crop     top {c['top']} left {c['left']} {c['height']}x{c['width']} {p['interpolation']}"
            f"{' hflip' if p['hflip'] else ''}; RandAugment: {ops or 'none'}"
        )
        mix = p["mix"]
        lines.append(
            f"  mix      {mix['mode']} lam {mix['lam']:.4f}" + (f" box {mix['box']}" if any(mix["box"]) else "")
        )
    top = ", ".join(f"{_shown(t)} {t['prob']:.4f}" for t in v["topk"])
    if v.get("tail"):
        top += "; tail (4-bit) " + ", ".join(f"{_shown(t)} ~{t['prob']:.4f}" for t in v["tail"])
    if v.get("draws"):
        drawn = sum(d["count"] for d in v["draws"])
        top += f"; {drawn} draws from the rest: " + ", ".join(f"{_shown(d)} x{d['count']}" for d in v["draws"][:8])
        top += " ..." if len(v["draws"]) > 8 else ""
    lines.append(f"  teacher  {top}; other classes {v['other_mass']:.4f}")
    return "\n".join(lines)


def _shown(entry: dict[str, Any]) -> str:
    """``Egyptian cat (n02124075, 285)``, or ``name (class)`` for a view described without labels."""
    return entry.get("shown") or f"{entry['name']} ({entry['class']})"
