"""``kdcache demo``: the end-to-end demo on scikit-learn's digits (offline, CPU)."""

from __future__ import annotations

import click

from kdcache.cli.common import fail_cleanly


@click.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(), help="Output directory.")
@click.option(
    "--seeds",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Student seeds 0..N-1 (all read the one cache); 3 reproduces docs/parity.md.",
)
@click.option("--quick", is_flag=True, help="Smoke run: 256 training images, one epoch per stage (accuracy is noise).")
@click.option("--teacher", default="resnet10t", show_default=True, help="timm teacher, trained here from scratch.")
@click.option("--teacher-epochs", default=6, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--teacher2",
    default="resnet14t",
    show_default=True,
    help="Second timm teacher, trained here and added to the same cache as a layer.",
)
@click.option(
    "--student", default="test_resnet", show_default=True, help="Student trained with --kd none/cached/online."
)
@click.option(
    "--student2", default="test_efficientnet", show_default=True, help="Second student, from the same cache (cached)."
)
@click.option("--epochs", type=click.IntRange(min=1), help="Student epochs = cached epochs [preset digits: 10].")
@click.option("--topk", default=10, show_default=True, type=click.IntRange(min=1), help="Soft labels kept per view.")
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="torch threads; 1 + one rendering worker fills 2 cores (32 px models gain nothing from more threads).",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=0), help="Rendering workers.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@fail_cleanly
def demo(**options) -> None:
    """Teacher, cache and students on scikit-learn's digits (1,797 real 8x8 handwritten digits), offline.

    \b
    1. writes the digits as a 32 px RGB ImageFolder (every 6th image to val: 1,497 train / 300 val);
    2. trains a teacher from scratch (plain CE) and saves its weights;
    3. `kdcache build`s one cache with the `digits` preset;
    4. trains a second teacher and adds it to the same cache as a layer (`kdcache build --teacher T2
       --out CACHE`: the views are replayed, not sampled again);
    5. trains a small student three ways (--kd none, cached, online) per seed, a second student
       from the same cache, and the first student from both teachers (`--teacher T1,T2`);
    6. prints top-1 (model, EMA, averaged EMA), wall times and teacher time; writes OUT/summary.md.

    A rerun with the same options reuses finished stages.
    """
    from kdcache.demo.run import DemoConfig, format_table, run_demo

    cfg = DemoConfig(**options)
    summary = run_demo(cfg, echo=lambda line: click.echo(line, err=True))
    click.echo("")
    click.echo(format_table(summary))
