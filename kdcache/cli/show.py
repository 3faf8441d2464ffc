"""``kdcache show``: the stored record of individual views, decoded."""

from __future__ import annotations

import json
from typing import Any

import click
import numpy as np

from kdcache.cli.common import fail_cleanly, parse_slots


@click.command()
@click.argument("cache", metavar="CACHE")
@click.option("--epoch", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--slots", default="0:8", show_default=True, help="Half-open slot range A:B of the epoch.")
@click.option("--data", help="Where the images are now, to show sample paths (default: the recorded source).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per view.")
@fail_cleanly
def show(cache: str, epoch: int, slots: str, data: str | None, as_json: bool) -> None:
    """Print what CACHE stores for slots A:B of an epoch: sample, repeat, view params, digest and the
    teacher's top-k classes with probabilities."""
    from kdcache.registry.lookup import resolve_cache_arg
    from kdcache.teacher_cache.store import open_cache, unit_slots

    a, b = parse_slots(slots)
    cache = resolve_cache_arg(cache, finished=False)
    reader = open_cache(cache, allow_unfinished=True)
    m = reader.manifest
    if b > m.num_slots:
        raise click.BadParameter(f"an epoch has {m.num_slots} slots; {slots} is out of range", param_hint="--slots")
    if epoch >= m.epochs_planned:
        done = ", ".join(map(str, sorted(reader.epochs_complete))) or "none yet"
        raise click.BadParameter(
            f"the cache has epochs 0..{m.epochs_planned - 1} (complete: {done}); got {epoch}", param_hint="--epoch"
        )
    names = _sample_names(m, data)
    for u in range(a // m.unit_size, (b - 1) // m.unit_size + 1):
        start = unit_slots(m, u)[0]
        rows = reader.read_unit(epoch, u)
        for slot in range(max(a, start), min(b, start + rows.num_views)):
            view = describe_view(m, epoch, slot, rows, slot - start, names)
            click.echo(json.dumps(view) if as_json else _text(view))


def describe_view(m: Any, epoch: int, slot: int, rows: Any, i: int, names: Any) -> dict[str, Any]:
    from kdcache.views.params import ParamDecodeError, decode, n_ops_for_width, to_json

    sample = int(rows.sample_id[i])
    try:
        params: Any = to_json(decode(rows.params[i], n_ops_for_width(m.record_width), m.image_size))
    except ParamDecodeError as e:
        params = {"error": str(e), "raw": rows.params[i].tolist()}
    probs = np.exp(rows.topk_logprob[i].astype(np.float64))
    return {
        "epoch": epoch,
        "slot": slot,
        "pair": slot // 2,
        "sample_id": sample,
        "path": names(sample) if names else None,
        "repeat": int(rows.repeat[i]),
        "params": params,
        "digest": f"{int(rows.digest[i]):016x}",
        "topk": [
            {"class": int(c), "name": m.class_names[int(c)], "prob": round(float(p), 6)}
            for c, p in zip(rows.topk_class[i], probs, strict=True)
        ],
        "other_mass": round(max(0.0, 1.0 - float(probs.sum())), 6),
    }


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
    top = ", ".join(f"{t['name']} ({t['class']}) {t['prob']:.4f}" for t in v["topk"])
    lines.append(f"  teacher  {top}; other classes {v['other_mass']:.4f}")
    return "\n".join(lines)
