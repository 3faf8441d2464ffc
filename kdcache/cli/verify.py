"""``kdcache verify``: is this cache still what the teacher saw?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kdcache.cli.common import fail_cleanly


@click.command()
@click.argument("cache", metavar="CACHE")
@click.option(
    "--views",
    "n_views",
    default=64,
    show_default=True,
    type=click.IntRange(min=2),
    help="Views to re-render and re-check (sampled over all complete epochs).",
)
@click.option(
    "--teacher-weights",
    type=click.Path(path_type=Path),
    help="The weights file the cache's first teacher was built with [default: the file its manifest records, "
    "if it exists; otherwise timm's pretrained download]. Further teacher layers use the files they record.",
)
@click.option("--data", help="Where the images are now, if not where the cache was built from.")
@click.option("--no-teacher", is_flag=True, help="Check digests only; do not re-run the teacher.")
@click.option("--device", default="cpu", show_default=True)
@fail_cleanly
def verify(
    cache: str, n_views: int, teacher_weights: Path | None, data: str | None, no_teacher: bool, device: str
) -> None:
    """Re-render sampled views and compare their digests; re-run the teacher and compare the stored
    top-k at the precision the manifest records.

    Probabilities must agree within 1e-3 in fp32, 2e-2 under fp16 autocast, 0.15 under bf16; format 2's
    tail codes must hold the fresh log-probs, format 3's draws must lie under their points of the fresh
    distribution. Exits 1 on any mismatch, naming the view."""
    from kdcache.registry.lookup import resolve_cache_arg
    from kdcache.teacher_cache.store import open_layers
    from kdcache.teacher_cache.store.layers import teacher_label
    from kdcache.teacher_cache.teacher_pass.verify import log_tolerance, verify_cache
    from kdcache.views.replay import LIKELY_CAUSE

    cache = resolve_cache_arg(cache, finished=True)

    layers = open_layers(cache)
    mismatches = []
    ok = True
    # The views are checked once, with the first layer; each teacher layer re-runs its own teacher.
    for i, (lid, reader) in enumerate(layers if not no_teacher else layers[:1]):
        given = str(teacher_weights) if teacher_weights is not None and i == 0 else None
        report = verify_cache(
            reader,
            n_views,
            data=data,
            teacher_weights=given or _recorded_weights(reader.manifest),
            check_teacher=not no_teacher,
            device=device,
        )
        if i == 0:
            click.echo(f"verify {cache}: {report.views} views re-rendered, {report.digest_ok} digests match")
            mismatches += report.mismatches
        else:  # the same views again: their digest mismatches are already listed
            mismatches += [m for m in report.mismatches if "digest" not in m.what]
        ok = ok and report.ok
        if not no_teacher:
            name = teacher_label(reader.manifest.teacher) + ("" if lid is None else f" (layers/{lid})")
            click.echo(
                f"  teacher {name} re-run on {report.teacher_checked} views, max |p_stored - p_fresh| = "
                f"{report.max_prob_diff:.2e} (tolerance {report.tolerance:g}, teacher {report.precision})"
                + (
                    "; format 2 tail: every fresh log-prob within its code's bin "
                    f"+- {log_tolerance(report.precision):g} nats"
                    if 0 >= report.max_tail_excess > float("-inf")
                    else ""
                )
                + (
                    f"; format 3: {report.draws_checked} draws checked against the fresh distribution, "
                    f"{report.knife_edges} within float error of a class boundary (accepted)"
                    if report.draws_checked
                    else ""
                )
            )
    if ok and not mismatches:
        click.echo("OK")
        return
    report.mismatches = mismatches
    for m in report.mismatches[:20]:
        click.echo(f"  MISMATCH {m}", err=True)
    if len(report.mismatches) > 20:
        click.echo(f"  ... and {len(report.mismatches) - 20} more", err=True)
    if any("digest" in m.what for m in report.mismatches):
        click.echo(LIKELY_CAUSE, err=True)
    click.echo(f"FAILED: {len(report.mismatches)} mismatch(es)", err=True)
    sys.exit(1)


def _recorded_weights(manifest) -> str | None:
    """The weights file a layer's manifest records, if it is still there."""
    path = manifest.teacher.get("weights")
    return str(path) if path and Path(path).is_file() else None
