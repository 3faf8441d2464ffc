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
@click.option(
    "--repair",
    is_flag=True,
    help="Read back every committed unit (checksums, sizes) of the cache and its teacher layers; remove the "
    "commit markers of damaged ones and rewrite them with the cache's recorded build settings (needs the "
    "teacher's weights and the data; otherwise prints the `kdcache build` command that finishes the repair).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    help="Views per teacher forward [default: 32 for the re-run; with --repair 128, as build: give the "
    "build's --batch-size so rewritten units match bit for bit].",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="With --repair: DataLoader workers rendering views for the rewrite (as build's --workers).",
)
@fail_cleanly
def verify(
    cache: str,
    n_views: int,
    teacher_weights: Path | None,
    data: str | None,
    no_teacher: bool,
    device: str,
    repair: bool,
    batch_size: int | None,
    workers: int,
) -> None:
    """Re-render sampled views and compare their digests; re-run the teacher and compare the stored
    top-k at the precision the manifest records.

    Probabilities must agree within 1e-3 in fp32, 2e-2 under fp16 autocast, 0.15 under bf16; format 2's
    tail codes must hold the fresh log-probs, format 3's draws must lie under their points of the fresh
    distribution. Exits 1 on any mismatch, naming the view. Plain verify only reads.

    With --repair it reads back every committed unit instead (zarr's crc32c per chunk, the wds shards'
    per-member CRC32), removes the commit markers of the damaged units and rewrites exactly those with the
    build that made them, so the cache regains the content hash it had; it reports what it found and
    rewrote, and exits 1 if something is left to do (then with the command that does it)."""
    from kdcache.errors import UsageError
    from kdcache.registry.lookup import resolve_cache_arg

    if repair:
        if no_teacher:
            raise UsageError("--repair rewrites damaged units with the teacher; drop --no-teacher")
        _repair(
            resolve_cache_arg(cache, finished=True),
            data,
            None if teacher_weights is None else str(teacher_weights),
            device,
            batch_size or 128,
            workers,
        )
        return
    from kdcache.teacher_cache.store import open_layers
    from kdcache.teacher_cache.store.layers import teacher_label
    from kdcache.teacher_cache.teacher_pass.repair import missing_units
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
            batch_size=batch_size or 32,
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
    # Units gone from epochs the manifest records as complete (an unfinished repair): say so, never pass.
    gone = [(lid, e, u) for lid, reader in layers for e, u in missing_units(reader)]
    for lid, e, u in gone[:20]:
        where = "" if lid is None else f"layers/{lid} "
        click.echo(
            f"  MISSING {where}epoch {e} unit {u}: not committed, but the manifest records epoch {e} complete", err=True
        )
    if gone:
        click.echo(f"FAILED: {len(gone)} unit(s) missing; `kdcache verify {cache} --repair` rewrites them", err=True)
        sys.exit(1)
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


def _repair(cache: str, data: str | None, weights: str | None, device: str, batch_size: int, workers: int) -> None:
    """``verify --repair``: what was damaged, which markers went, what was rewritten; exit 1 if unfinished."""
    from kdcache.teacher_cache.teacher_pass.repair import repair_cache

    report = repair_cache(
        cache, data=data, teacher_weights=weights, device=device, batch_size=batch_size, workers=workers
    )
    units = sum(s.units_read for s in report.stores)
    damage, missing = report.damage, report.missing
    click.echo(
        f"verify --repair {cache}: read back {units} committed unit(s) in {len(report.stores)} store(s); "
        f"{len(damage)} damaged" + (f", {missing} missing from complete epochs" if missing else "")
    )
    if not damage and not missing:
        click.echo("OK: every committed unit reads back; nothing to repair")
        return
    for s in report.stores:
        where = "" if s.layer is None else f"layers/{s.layer} "
        for d in s.damage:
            click.echo(f"  damaged  {where}{d.describe()}")
            click.echo(f"  removed  its commit marker {d.marker_path}")
        for e, u in s.missing:
            click.echo(f"  missing  {where}epoch {e} unit {u}: not committed")
        if s.needs_build and s.missing_input is None:
            click.echo(f"  rewrote  {s.rewritten} unit(s) of teacher {s.teacher} with the cache's recorded settings")
        for d in s.still_damaged:
            click.echo(f"  STILL DAMAGED {where}{d.describe()}", err=True)
    todo = len(damage) + missing
    unavailable = [s for s in report.stores if s.needs_build and s.missing_input]
    if unavailable:
        for s in unavailable:
            click.echo(f"  cannot rewrite the units of teacher {s.teacher} here: {s.missing_input}", err=True)
        commands = "\n  ".join(s.command for s in report.stores if s.needs_build)
        click.echo(
            "Readers now see these units as not built yet. Finish the repair where the teacher's weights and the "
            "data are, with this command (put --data / --teacher-weights where they are now), or run "
            f"`kdcache verify --repair` again there:\n  {commands}",
            err=True,
        )
        click.echo(f"FAILED: {todo} unit(s) not rewritten", err=True)
        sys.exit(1)
    if not report.repaired:
        click.echo("FAILED: rewritten units still do not read back", err=True)
        sys.exit(1)
    click.echo(f"OK: {todo} unit(s) rewritten; each reads back")
