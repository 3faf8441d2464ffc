"""``kdcache export``: copy a cache into the other backend; the content digest stays the same."""

from __future__ import annotations

import sys

import click

from kdcache.cli.common import fail_cleanly


@click.command()
@click.argument("cache", metavar="CACHE")
@click.option("--format", "fmt", required=True, type=click.Choice(["zarr", "wds"]), help="Backend to write.")
@click.option("--out", required=True, help="New (or partly exported) directory or fsspec URL.")
@click.option("--no-check", is_flag=True, help="Skip comparing the content digests of source and copy.")
@fail_cleanly
def export(cache: str, fmt: str, out: str, no_check: bool) -> None:
    """Convert CACHE to the zarr (random access) or wds (streaming) backend.

    Only committed units are copied; rerunning an interrupted export resumes it.
    """
    from kdcache.registry.lookup import resolve_cache_arg
    from kdcache.storage import open_storage
    from kdcache.teacher_cache.store import content_hash, create_or_open_writer, open_cache

    cache = resolve_cache_arg(cache, finished=True)

    src = open_cache(cache)
    if open_storage(out).absolute() == src.storage.absolute():
        raise click.BadParameter("--out must differ from CACHE", param_hint="--out")
    writer = create_or_open_writer(out, src.manifest.replace(epochs_complete=()), backend=fmt)
    done = writer.completed_units()
    todo = sorted(src.completed_units() - done)
    with click.progressbar(todo, label=f"export to {fmt}", file=sys.stderr) as bar:
        for epoch, unit in bar:
            writer.write_unit(epoch, unit, src.read_unit(epoch, unit))
    writer.finalize()
    msg = f"exported {len(todo)} unit(s) to {out} ({fmt}); {len(done)} were already there"
    if not no_check:
        digest = content_hash(src)
        if content_hash(open_cache(out)) != digest:
            raise click.ClickException(f"content digest of {out} differs from {cache}: the export is damaged")
        msg += f"; content digest {digest} unchanged"
    click.echo(msg)
