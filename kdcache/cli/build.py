"""``kdcache build``: the teacher pass."""

from __future__ import annotations

from pathlib import Path

import click

from kdcache.cli.common import fail_cleanly


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
    "--cache-root",
    envvar="KDCACHE_HOME",
    help="Registry root (directory or fsspec URL) used when --out is not given "
    "[env KDCACHE_HOME; default: the user cache directory, e.g. ~/.cache/kdcache].",
)
@click.option(
    "--format",
    "backend",
    type=click.Choice(["zarr", "wds"]),
    default="zarr",
    show_default=True,
    help="Store backend: zarr (random access) or wds (tar shards, streaming).",
)
@click.option(
    "--epochs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Epochs of views to cache; a larger value on an existing cache appends epochs.",
)
@click.option("--repeats", type=click.IntRange(1, 255), help="Repeated augmentation R [recipe: 3].")
@click.option("--topk", default=10, show_default=True, type=click.IntRange(min=1), help="Soft labels kept per view.")
@click.option("--image-size", type=click.IntRange(8, 4096), help="View size in pixels [recipe: 224].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="Seed of every view.")
@click.option("--recipe", default="seed", show_default=True, help="Preset name or recipe YAML file.")
@click.option(
    "--teacher-weights",
    type=click.Path(path_type=Path),
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
    help="Autocast for the teacher; auto = bf16 on CUDA, off on CPU.",
)
@click.option("--channels-last/--no-channels-last", default=None, help="Channels-last teacher [default: on for CUDA].")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the teacher.")
@click.option(
    "--unit-size",
    default=10240,
    show_default=True,
    type=click.IntRange(min=2),
    help="Views per work unit: the unit of writing, resuming and distribution (even).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@fail_cleanly
def build(
    teacher,
    data,
    out,
    cache_root,
    backend,
    epochs,
    repeats,
    topk,
    image_size,
    seed,
    recipe,
    teacher_weights,
    batch_size,
    workers,
    device,
    amp,
    channels_last,
    compile_,
    unit_size,
    no_progress,
) -> None:
    """Run the teacher once on every view of EPOCHS epochs and write top-k soft labels.

    Without --out the cache goes to the registry (see `kdcache ls`) under a key made from what
    determines its content: the same command again reuses it at once, a larger --epochs extends it.

    Rerunning the same command resumes (completed units are skipped); a larger --epochs appends
    epochs; any other difference from the existing cache is refused with the list of differences.
    Under `torchrun --nproc-per-node N -m kdcache build ...` rank r of N takes work units r::N.
    """
    from kdcache.teacher_cache.build_config import BuildConfig
    from kdcache.teacher_cache.pipeline import run_build

    cfg = BuildConfig(
        teacher=teacher,
        data=data,
        out=out,
        cache_root=cache_root,
        backend=backend,
        epochs=epochs,
        repeats=repeats,
        topk=topk,
        image_size=image_size,
        seed=seed,
        recipe=recipe,
        teacher_weights=None if teacher_weights is None else str(teacher_weights),
        batch_size=batch_size,
        workers=workers,
        device=device,
        amp=amp,
        channels_last=channels_last,
        compile=compile_,
        unit_size=unit_size,
        progress=not no_progress,
    )
    summary = run_build(cfg)
    if summary:
        click.echo(summary, err=True)
