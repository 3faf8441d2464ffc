"""``kdcache rm``: delete a cache from the registry."""

from __future__ import annotations

import sys

import click

from kdcache.cli.common import fail_cleanly
from kdcache.cli.ls import ROOT_HELP


@click.command()
@click.argument("key")
@click.option("--cache-root", envvar="KDCACHE_HOME", help=ROOT_HELP)
@click.option("--format", "backend", type=click.Choice(["zarr", "wds"]), help="Remove only this format.")
@click.option(
    "--teacher",
    help="Remove only this teacher's layer (name, model or layer id from `kdcache info`); the views and the "
    "other teachers stay.",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@fail_cleanly
def rm(key: str, cache_root: str | None, backend: str | None, teacher: str | None, yes: bool) -> None:
    """Delete cache KEY (a key from `kdcache ls`, or a unique prefix of at least 4 characters).

    Refused while a build is writing it. Asks first unless --yes; without a terminal, --yes is required.
    """
    from kdcache.registry import cache_root as open_root
    from kdcache.registry import list_entries, remove_entry, resolve_key
    from kdcache.registry.catalog import remove_layer

    root = open_root(cache_root)
    key = resolve_key(root, key)
    if teacher is not None:
        if not yes:
            if not sys.stdin.isatty():
                raise click.UsageError(f"removing teacher {teacher} from {key} needs confirmation: pass --yes")
            click.confirm(f"remove teacher {teacher} from cache {key}?", abort=True)
        for where in remove_layer(root, key, teacher, backend):
            click.echo(f"removed teacher {teacher} from cache {key}: {where}")
        return
    entries = [e for e in list_entries(root, keys=[key]) if backend in (None, e.backend)]
    what = (
        ", ".join(
            f"{e.backend} ({', '.join(e.teachers)}, {len(e.epochs_complete)} epochs, {e.bytes or 0:,} bytes)"
            for e in entries
        )
        or "its registry entry"
    )
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"removing {key} [{what}] needs confirmation: pass --yes")
        click.confirm(f"remove cache {key}: {what}?", abort=True)
    remove_entry(root, key, backend)
    # The sizes `ls` measured just above: measuring again would list every object a second time.
    freed = sum(e.bytes or 0 for e in entries)
    click.echo(f"removed {key} ({backend or 'all formats'}): {freed / 1e6:.2f} MB freed")
