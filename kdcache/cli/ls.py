"""``kdcache ls``: the caches in the registry."""

from __future__ import annotations

import json

import click

from kdcache.cli.common import fail_cleanly

ROOT_HELP = "Registry root (directory or fsspec URL) [env KDCACHE_HOME; default: the user cache directory]."


@click.command(name="ls")
@click.option("--cache-root", envvar="KDCACHE_HOME", help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of the table.")
@click.option("--no-size", is_flag=True, help="Skip measuring sizes (lists every object of each cache).")
@fail_cleanly
def ls(cache_root: str | None, as_json: bool, no_size: bool) -> None:
    """List the caches in the registry, most recently used first: key, format, teacher, dataset,
    complete epochs, views, size, created and last used."""
    from kdcache.registry import cache_root as open_root
    from kdcache.registry import list_entries

    root = open_root(cache_root)
    entries = list_entries(root, sizes=not no_size)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no caches under {root.where()}; `kdcache build` without --out puts them there", err=True)
        return
    click.echo(format_table(entries))
    click.echo(f"{len(entries)} cache(s) under {root.where()}", err=True)


def format_table(entries) -> str:
    head = ("KEY", "FORMAT", "TEACHER", "DATASET", "EPOCHS", "VIEWS", "SIZE", "CREATED", "LAST USED")
    rows = [head]
    for e in entries:
        epochs = f"{len(e.epochs_complete)}/{e.manifest.epochs_planned}" + ("" if e.finished else " (building)")
        rows.append(
            (
                e.key,
                e.backend,
                ", ".join(e.teachers),
                e.dataset,
                epochs,
                f"{e.views:,}",
                "-" if e.bytes is None else _size(e.bytes),
                e.created[:16].replace("T", " "),
                (e.last_used or "never")[:16].replace("T", " "),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
