"""``kdcache info``: what a cache holds, how complete it is, and what it costs on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kdcache.cli.common import fail_cleanly


@click.command()
@click.argument("cache", metavar="CACHE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@click.option(
    "--no-hash", "--no-digest", "no_hash", is_flag=True, help="Skip the content hash (it reads every committed unit)."
)
@fail_cleanly
def info(cache: str, as_json: bool, no_hash: bool) -> None:
    """Summarise CACHE: teacher, dataset, recipe, complete epochs, size on disk, content hash.

    Works on a build in progress too: only committed units count.
    """
    from kdcache.registry.lookup import resolve_cache_arg
    from kdcache.teacher_cache.store import open_layers

    cache = resolve_cache_arg(cache, finished=False)

    layers = open_layers(cache, allow_unfinished=True)
    reader = layers[0][1]
    summary = cache_summary(reader, digest=not no_hash)
    summary["layers"] = [layer_summary(lid, r, digest=not no_hash) for lid, r in layers]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(_text(cache, summary))


def cache_summary(reader: Any, digest: bool = True) -> dict[str, Any]:
    from kdcache.teacher_cache.store import content_hash
    from kdcache.teacher_cache.store.fidelity import read_summary
    from kdcache.views.coverage import coverage

    m = reader.manifest
    hashed = content_hash(reader) if digest else None
    cov = coverage(m.seed, reader.epochs_complete, m.dataset["num_samples"], m.repeats)
    views = reader.num_views()
    size = reader.bytes_on_disk()
    units = reader.completed_units()
    return {
        "path": str(reader.root),
        "format_version": m.format_version,
        "backend": m.backend,
        "finished": reader.finished,
        "teacher": m.teacher,
        "num_samples": m.dataset["num_samples"],
        "dataset": {k: v for k, v in m.dataset.items() if k in ("fingerprint", "num_samples", "source", "kind")},
        "num_classes": m.num_classes,
        "classes": _classes(m),
        "image_size": m.image_size,
        "topk": m.topk,
        "tail_classes": m.tail_classes,
        "draws": m.draws,
        "seed": m.seed,
        "repeats": m.repeats,
        "recipe": m.recipe.get("name"),
        "num_slots": m.num_slots,
        "unit_size": m.unit_size,
        "units_per_epoch": reader.num_units,
        "units_complete": len(units),
        "epochs_planned": m.epochs_planned,
        "epochs_complete": reader.epochs_complete,
        "coverage": cov.to_dict(),  # what a student sees of the dataset from the complete epochs
        "views": views,
        "bytes_on_disk": size,
        "bytes_per_view": round(size / views, 2) if views else None,
        # measured by the build (fidelity.json, bookkeeping outside the content hash); None before it existed
        "fidelity": read_summary(reader.storage),
        "content_hash": hashed,
        "content_digest": hashed,  # its name before 0.2 (a view's digest is another thing); kept for scripts
        "created": m.created,
        "kdcache_version": m.kdcache_version,
        "library_versions": m.library_versions,
    }


def _classes(m: Any) -> dict[str, Any]:
    """Where the readable class names come from, and the first few (ImageNet names beside WordNet ids)."""
    from kdcache.models.class_names import ClassNames

    names = ClassNames.of(m.class_names, m.num_classes)
    first = [names.describe(i) for i in range(min(5, len(names)))]
    return {"source": names.source, "summary": names.summary(), "first": first}


def layer_summary(lid: str | None, reader: Any, digest: bool = True) -> dict[str, Any]:
    """One teacher layer of a cache: its teacher, k and content hash (the first layer's is the cache's)."""
    from kdcache.teacher_cache.store import content_hash
    from kdcache.teacher_cache.store.layers import LAYERS_DIR, teacher_label

    t = reader.manifest.teacher
    return {
        "layer": lid,  # None: the cache's own store
        "path": str(reader.root) if lid is None else f"{LAYERS_DIR}/{lid}",
        "teacher": teacher_label(t),
        "model": t.get("model"),
        "weights_sha256": t.get("weights_sha256"),
        "precision": t.get("precision"),
        "topk": reader.manifest.topk,
        "format_version": reader.manifest.format_version,
        "tail_classes": reader.manifest.tail_classes,
        "draws": reader.manifest.draws,
        "labels": reader.manifest.label_scheme,
        "finished": reader.finished,
        "epochs_complete": reader.epochs_complete,
        "content_hash": content_hash(reader) if digest else None,
    }


def epoch_ranges(epochs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: list[str] = []
    for e in epochs:
        if parts and e == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{e}"
        else:
            parts.append(str(e))
    return ", ".join(parts) or "none"


def _text(cache: Path, s: dict[str, Any]) -> str:
    from kdcache.teacher_cache.store.fidelity import format_summary

    t = s["teacher"]
    status = "finished" if s["finished"] else "build in progress or interrupted (rerun `kdcache build` to resume)"
    per_view = f"{s['bytes_per_view']:.1f} B/view" if s["bytes_per_view"] is not None else "no views yet"
    rows = [
        ("cache", f"{cache} ({s['backend']}, format {s['format_version']}, {status})"),
        ("teacher", f"{t.get('name')} (weights sha256 {str(t.get('weights_sha256'))[:16]}...)"),
        ("dataset", f"{s['num_samples']} samples, {s['dataset'].get('source') or 'source not recorded'}"),
        *((("classes", s["classes"]["summary"]),) if s.get("classes") else ()),
        ("views", f"{s['image_size']}px, recipe {s['recipe']}, seed {s['seed']}, repeats x{s['repeats']}"),
        ("soft labels", _labels_line(s)),
        ("fidelity", format_summary(s["fidelity"], s["views"])),
        (
            "epochs",
            f"complete: {epoch_ranges(s['epochs_complete'])} ({len(s['epochs_complete'])} of "
            f"{s['epochs_planned']} planned); units {s['units_complete']} committed, "
            f"{s['units_per_epoch']} per epoch of {s['unit_size']} views",
        ),
        (
            "coverage",
            f"{100 * s['coverage']['share_seen']:.1f}% of the samples, "
            f"{s['coverage']['views_per_sample']:.2f} distinct views per sample seen"
            + ("" if s["coverage"]["exact"] else " (estimated)"),
        ),
        *(
            (
                "layer" if i else "teachers",
                f"{x['teacher']} ({x['model']}, weights sha256 {str(x['weights_sha256'])[:12]}..., "
                f"{x['precision'] or 'precision not recorded'}, {x['labels']}) {x['path']}: epochs "
                f"{epoch_ranges(x['epochs_complete'])}{'' if x['finished'] else ' (unfinished)'}, content "
                f"{(x['content_hash'] or 'hash skipped')[:16]}",
            )
            for i, x in enumerate(s.get("layers", []))
        ),
        ("stored", f"{s['views']:,} views, {s['bytes_on_disk'] / 1e6:.2f} MB on disk, {per_view}"),
        ("content", s["content_hash"] or "(hash skipped)"),
        ("created", f"{s['created']} by kdcache {s['kdcache_version']}"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in s["library_versions"].items()) or "not recorded"),
    ]
    return "\n".join(f"{k:<12} {v}" for k, v in rows)


def _labels_line(s: dict) -> str:
    line = f"top-{s['topk']} of {s['num_classes']} classes (fp16 log-probs)"
    if s.get("tail_classes"):
        line += f" + the next {s['tail_classes']} at 4 bits (format 2 tail)"
    if s.get("draws"):
        line += (
            f" + {s['draws']} systematic draws from the rest (format 3: unbiased, averages to the teacher; "
            f"noise of {s['draws']} draws per view)"
        )
    return line
