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
    help="The weights file the cache was built with (otherwise timm's pretrained download).",
)
@click.option("--data", help="Where the images are now, if not where the cache was built from.")
@click.option("--no-teacher", is_flag=True, help="Check digests only; do not re-run the teacher.")
@click.option("--device", default="cpu", show_default=True)
@fail_cleanly
def verify(
    cache: str, n_views: int, teacher_weights: Path | None, data: str | None, no_teacher: bool, device: str
) -> None:
    """Re-render sampled views and compare their digests; re-run the teacher and compare the stored
    top-k at the precision the manifest records (probabilities within 1e-3 in fp32, 2e-2 under fp16
    autocast, 0.15 under bf16). Exits 1 on any mismatch, naming the view."""
    from kdcache.registry.lookup import resolve_cache_arg
    from kdcache.teacher_cache.build.verify import verify_cache
    from kdcache.teacher_cache.replay import LIKELY_CAUSE
    from kdcache.teacher_cache.store import open_cache

    cache = resolve_cache_arg(cache, finished=True)

    reader = open_cache(cache)
    report = verify_cache(
        reader,
        n_views,
        data=data,
        teacher_weights=None if teacher_weights is None else str(teacher_weights),
        check_teacher=not no_teacher,
        device=device,
    )
    click.echo(f"verify {cache}: {report.views} views re-rendered, {report.digest_ok} digests match")
    if not no_teacher:
        click.echo(
            f"  teacher re-run on {report.teacher_checked} views, max |p_stored - p_fresh| = "
            f"{report.max_prob_diff:.2e} (tolerance {report.tolerance:g}, teacher {report.precision})"
        )
    if report.ok:
        click.echo("OK")
        return
    for m in report.mismatches[:20]:
        click.echo(f"  MISMATCH {m}", err=True)
    if len(report.mismatches) > 20:
        click.echo(f"  ... and {len(report.mismatches) - 20} more", err=True)
    if any("digest" in m.what for m in report.mismatches):
        click.echo(LIKELY_CAUSE, err=True)
    click.echo(f"FAILED: {len(report.mismatches)} mismatch(es)", err=True)
    sys.exit(1)
