"""``kdcache build``: the teacher pass."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import click

from kdcache.cli.common import fail_cleanly

if TYPE_CHECKING:  # the command's modules load lazily (kdcache/cli/main.py)
    from kdcache.registry.destination import Destination
    from kdcache.teacher_cache.teacher_pass.config import BuildConfig
    from kdcache.teacher_cache.teacher_pass.dry_run import BuildPlan
    from kdcache.teacher_cache.teacher_pass.pipeline import PreparedBuild


@click.command()
@click.option(
    "--teacher", required=True, help="timm model name or alias (beit_base = beit_base_patch16_224.in22k_ft_in22k_in1k)."
)
@click.option("--data", required=True, help="ImageFolder root, or WebDataset shards like 'train-{000000..000146}.tar'.")
@click.option(
    "--out",
    help="Cache directory or fsspec URL (s3://bucket/prefix), created or resumed. "
    "Default: the cache root, under a key made from what determines the content.",
)
@click.option(
    "--cache",
    help="An existing cache to add this teacher to, by registry key (prefix) or path: the teacher's soft labels "
    "become a layer on the cache's views (same as --out for a path).",
)
@click.option(
    "--cache-root",
    envvar="KDCACHE_HOME",
    help="Registry root (directory or fsspec URL) used when --out is not given "
    "[env KDCACHE_HOME; default: the user cache directory, e.g. ~/.cache/kdcache].",
)
@click.option(
    "--format",
    type=click.Choice(["zarr", "wds"]),
    default="zarr",
    show_default=True,
    help="Store backend: zarr (random access) or wds (tar shards, streaming).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help="Epochs of views to cache [recipe: its training epochs, 610 for seed, so a student never cycles a "
    "short cache]; a larger value on an existing cache appends epochs.",
)
@click.option("--repeats", type=click.IntRange(1, 255), help="Repeated augmentation R [recipe: 3].")
@click.option(
    "--topk",
    type=click.IntRange(min=1),
    help="Classes per view stored with their exact (fp16) probability [format 3: 3; formats 1 and 2: 10, or "
    "every class of a teacher with fewer]. The rest of the mass is carried by format 3's draws, or spread "
    "evenly over the other classes (format 1; format 2 first stores a tail).",
)
@click.option(
    "--format-version",
    type=click.IntRange(1, 3),
    help="Cache format [without --topk: 1 storing every class for a teacher of up to 10 classes, else 3; "
    "with --topk alone: 1, as before format 3]. "
    "1: the top-k, the rest spread evenly (biased at 1000 classes). 2 adds a tail: the next --tail-classes "
    "classes with 4-bit log-probs. 3 adds --draws classes drawn from the rest of the teacher's distribution: "
    "unbiased, they average to the teacher (docs/cache-format.md; docs/parity.md for the students they train).",
)
@click.option(
    "--tail-classes",
    type=click.IntRange(min=1),
    help="Format 2 only: classes stored after the top-k, 4 bits each [10].",
)
@click.option(
    "--draws",
    type=click.IntRange(min=1),
    help="Format 3 only: systematic draws per view from the teacher's distribution outside the top-k [40].",
)
@click.option("--image-size", type=click.IntRange(8, 4096), help="View size in pixels [recipe: 224].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="Seed of every view.")
@click.option("--recipe", default="seed", show_default=True, help="Preset name or recipe YAML file.")
@click.option(
    "--teacher-weights",
    type=click.Path(),
    help="Local .pth/.safetensors in timm's key layout (otherwise timm downloads pretrained weights).",
)
@click.option(
    "--batch-size", default=128, show_default=True, type=click.IntRange(min=2), help="Views per teacher forward (even)."
)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(min=0), help="DataLoader workers rendering views."
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--amp",
    type=click.Choice(["auto", "bf16", "fp16", "off"]),
    default="auto",
    show_default=True,
    help="Autocast for the teacher's body (its classifier head runs in fp32); auto = fp16 on CUDA, off on CPU. "
    "Recorded in the manifest as teacher.precision; part of the cache's key.",
)
@click.option("--channels-last/--no-channels-last", default=None, help="Channels-last teacher [default: on for CUDA].")
@click.option("--compile", is_flag=True, help="torch.compile the teacher.")
@click.option(
    "--unit-size",
    default=10240,
    show_default=True,
    type=click.IntRange(min=2),
    help="Views per work unit: the unit of writing, resuming and distribution (even).",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan and exit, writing nothing: views (and those already in the cache), work units, "
    "files/objects, bytes, host RAM per rank and hours. The hours use --assume-rate, else a rate measured on a "
    "few batches rendered and run through the teacher here, in memory.",
)
@click.option(
    "--assume-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="With --dry-run: views/s per rank for the hours (e.g. a GPU's teacher throughput) instead of measuring "
    "on this machine.",
)
@click.option(
    "--world-size",
    type=click.IntRange(min=1),
    help="With --dry-run: plan for this many ranks (torchrun processes), e.g. 8 or 64 from one machine "
    "[$WORLD_SIZE, else 1].",
)
@fail_cleanly
def build(**options) -> None:
    """Run the teacher once on every view of EPOCHS epochs and write its soft labels (top-k; format 2 adds a
    4-bit tail, format 3 draws from the rest).

    Without --out the cache goes to the registry (see `kdcache ls`) under a key made from what
    determines its content: the same command again reuses it at once, a larger --epochs extends it.

    Rerunning the same command resumes (completed units are skipped); a larger --epochs appends
    epochs; any other difference from the existing cache is refused with the list of differences (in
    the registry: another --topk or --format-version than the teacher's stored labels, with the ways on).
    Under `torchrun --nproc-per-node N -m kdcache build ...` rank r of N takes work units r::N.

    With --dry-run nothing is written (no cache folder, lock, registry entry or logs) and the teacher only
    runs in memory to measure a rate: the plan goes to stdout. Plan a cluster from one machine with
    `--dry-run --world-size 64 --assume-rate 2600`.
    """
    from kdcache.teacher_cache.teacher_pass.config import BuildConfig

    cfg = BuildConfig(**options)
    summary = build_and_summarise(cfg)
    if summary:
        click.echo(summary, err=not cfg.dry_run)  # a dry run's plan is the command's output


def build_and_summarise(cfg: BuildConfig) -> str:
    """Build ``cfg`` (into the registry when it has no --out) and return the summary ("" on ranks > 0);
    with ``cfg.dry_run``, return the plan and write nothing."""
    from kdcache.registry.catalog import record, touch
    from kdcache.teacher_cache.teacher_pass.command import build_command
    from kdcache.teacher_cache.teacher_pass.pipeline import run_build

    cfg = cfg.resolved()
    if cfg.dry_run:
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun one plan is enough
            return ""
        from kdcache.teacher_cache.teacher_pass.dry_run import format_plan

        return format_plan(dry_run_plan(cfg))
    cfg, prep, out, dest = _resolve_destination(cfg)
    if dest is not None and dest.state == "reused":
        if int(os.environ.get("RANK", "0")) != 0:
            return ""
        touch(dest.root, dest.key)
        held = "" if dest.layer is None else f" (teacher {cfg.teacher}: layers/{dest.layer})"
        return "\n".join(
            [
                f"kdcache build: reused {dest.out}{held} ({cfg.format}); nothing to compute",
                f"  registry       key {dest.key}: epochs {list(dest.epochs_before)} are complete; {cfg.epochs} asked",
                "  the teacher did not run; a larger --epochs extends this cache",
            ]
        )
    result = run_build(cfg, prep, out)
    if result is None:
        return ""
    summary = result.summary(cfg.teacher)
    if dest is not None:
        record(dest.root, dest.key, used=True, build_command=build_command(cfg))
        what = {
            "new": "new cache",
            "extended": f"extended the cache that had epochs {list(dest.epochs_before)}",
            "resumed": "resumed an unfinished build",
            "layer": "a new teacher layer on the cache's views",
        }[dest.state]
        if dest.layer is not None and dest.state != "layer":
            what += f" (teacher layer {dest.layer})"
        summary += f"\n  registry       key {dest.key}: {what}"
    return summary


def dry_run_plan(cfg: BuildConfig) -> BuildPlan:
    """The :class:`~kdcache.teacher_cache.teacher_pass.dry_run.BuildPlan` of ``cfg``'s build, where the build
    would go (its --out, or the registry's choice), reading only: the registry root is not created."""
    from kdcache.teacher_cache.teacher_pass.dry_run import plan_build

    cfg, prep, out, dest = _resolve_destination(cfg.resolved())
    registry = None
    if dest is not None:
        held = "" if dest.layer is None else f", teacher layer {dest.layer}"
        registry = (
            f"key {dest.key} under {dest.root.where()} ({dest.state}{held}); the dry run creates neither "
            "the root nor the entry"
        )
    return plan_build(cfg, prep, out, registry=registry)


def _resolve_destination(cfg: BuildConfig) -> tuple[BuildConfig, PreparedBuild, str, Destination | None]:
    """(the config with --cache resolved, the prepared build, where it goes, the registry's Destination or
    None with --out or --cache), reading only."""
    from kdcache.registry.destination import plan_destination
    from kdcache.registry.root import cache_root
    from kdcache.teacher_cache.teacher_pass.pipeline import prepare_build

    if cfg.cache is not None:  # a registry key: the finished cache it names is the target
        from kdcache.registry.lookup import resolve_cache_arg

        cfg = dataclasses.replace(cfg, out=resolve_cache_arg(cfg.cache, finished=True, root=cfg.cache_root), cache=None)
    prep = prepare_build(cfg)
    cfg = cfg.for_classes(prep.manifest.num_classes)  # the label scheme settled for the teacher
    dest = None
    out = cfg.out
    if out is None:
        # Every rank computes the same key from the same inputs, so no rank needs to tell the others.
        dest, manifest = plan_destination(cache_root(cfg.cache_root), prep.manifest, cfg.epochs)
        prep, out = prep.with_manifest(manifest), dest.out
    return cfg, prep, out, dest
