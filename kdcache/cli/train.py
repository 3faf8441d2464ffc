"""``kdcache train``: the student, from the cache."""

from __future__ import annotations

import click

from kdcache.cli.common import fail_cleanly


@click.command()
@click.option("--student", help="timm model name of the student [recipe: resnet50].")
@click.option(
    "--cache",
    help="A cache written by `kdcache build`: directory or fsspec URL. Default: look it up in the cache root "
    "from --teacher and --data.",
)
@click.option(
    "--cache-root",
    envvar="KDCACHE_HOME",
    help="Registry root searched when --cache is a key or not given [env KDCACHE_HOME].",
)
@click.option("--out", required=True, type=click.Path(), help="Run directory (checkpoints, logs).")
@click.option("--data", help="Where the training images are, if not where the cache was built from.")
@click.option("--val-data", help="ImageFolder for validation (resize image_size/0.875, centre crop).")
@click.option(
    "--kd",
    type=click.Choice(["cached", "online", "none"]),
    default="cached",
    show_default=True,
    help="cached: soft labels from the cache; online: run the teacher on the same views; none: CE only.",
)
@click.option(
    "--teacher",
    help="Finds the cache in the registry (with --data). --kd cached: the cache's teacher(s) whose soft labels "
    "to train on: T1, T1,T2 (mean of their distributions) or T1:0.7,T2:0.3 [the cache's own]; --kd online: "
    "the one teacher to run [the cache's].",
)
@click.option(
    "--teacher-weights",
    type=click.Path(),
    help="Local teacher weights: narrows the registry search; --kd online: the weights to run [default: the file "
    "the cache records, checked against its sha256; a cache built from timm's download downloads them again].",
)
@click.option("--config", help="Preset name or recipe YAML for the training part (augmentation comes from the cache).")
@click.option("--epochs", type=click.IntRange(min=1), help="Student epochs [recipe: 610]; cooldown is kept.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    help="Global batch in views, over all processes [recipe: 1536, the seed's 8 GPUs x 192]; even, divisible "
    "by 2 x the number of processes (each takes an equal share).",
)
@click.option("--lr", type=float, help="Peak learning rate [recipe: 5e-3]; not rescaled with the batch.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="DataLoader workers.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True)
@click.option("--channels-last", is_flag=True)
@click.option("--compile", is_flag=True, help="torch.compile the student.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--eval-every", type=click.IntRange(min=1), help="Validate every N epochs [recipe: 1].")
@click.option("--average-top", type=click.IntRange(min=1), help="Average the best N EMA checkpoints [recipe: 10].")
@click.option(
    "--replay-check",
    default=64,
    show_default=True,
    type=click.IntRange(min=0),
    help="Views re-rendered and compared with their stored digests before training (0: skip).",
)
@click.option(
    "--checkpoint-every",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Also save the resumable checkpoint every N steps within an epoch (0: at epoch ends only).",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Progress bar (the epoch's mean loss so far, lr, data wait); one line per epoch is printed either way.",
)
@click.option(
    "--allow-epoch-reuse",
    is_flag=True,
    help="Train more epochs than the cache holds: cycle through its epochs, each pass in a fresh pair order "
    "(otherwise refused, with the coverage and the build command that extends the cache).",
)
@fail_cleanly
def train(**options) -> None:
    """Train a student on the cache's views; the teacher never runs (unless --kd online).

    Without --cache, `--teacher T --data D` finds the finished cache of that teacher and dataset in
    the registry (or says which `kdcache build` command creates it); --cache also takes a registry key.

    --batch-size is the global batch, over all processes (the seed recipe: 8 GPUs x 192 = 1536).
    Under `torchrun --nproc-per-node N -m kdcache train ...` each process takes its share of every
    global batch (DDP). Logs: RUN/metrics.jsonl and TensorBoard in RUN/tb.
    """
    import dataclasses

    from kdcache.registry.lookup import recorded_build_command, resolve_train_cache
    from kdcache.student.args import TrainArgs
    from kdcache.student.run import run_train
    from kdcache.teacher_cache.teacher_pass.command import registry_build_hint

    args = TrainArgs(**options)
    hint = None
    if args.cache is None:
        hint = registry_build_hint(
            args.teacher,
            args.data,
            teacher_weights=args.teacher_weights,
            cache_root=args.cache_root,
            epochs=args.epochs,
        )
    cache, found = resolve_train_cache(args, hint)
    if found:
        click.echo(found, err=True)
    outcome = run_train(
        dataclasses.replace(args, cache=cache),
        recorded_build_command,
        on_start=lambda lines: click.echo("\n".join(lines)),
        on_epoch=lambda line: click.echo(line, err=True),
    )
    if outcome.result is not None:
        click.echo("\n".join(summary_lines(outcome.result, args.workers)), err=True)


def summary_lines(result, workers: int) -> list[str]:
    """The end-of-run summary of a finished ``kdcache train``."""
    from kdcache.bottleneck import STUDENT_REMEDY, feed_report

    lines = [f"kdcache train finished: {result.out_dir} ({result.epochs_done} epochs, {result.global_step} steps)"]
    t = result.train_loss
    parts = ", ".join(f"{k.upper()} {t[k]:.4f}" for k in ("kd", "ce") if k in t)
    lines.append(
        f"  final train loss {t['loss']:.4f}" + (f" ({parts})" if parts else "") + f" (epoch {result.epochs_done})"
        if "loss" in t
        else "  final train loss: none recorded (no epoch finished in this run directory)"
    )
    if result.final is not None:
        lines.append(
            f"  averaged EMA of epochs {result.averaged_epochs}: "
            f"top-1 {result.final.top1:.2f}%, top-5 {result.final.top5:.2f}%"
        )
    if result.train_seconds > 0:
        lines.append(f"  data: {feed_report(result.feed, workers, 'student step', STUDENT_REMEDY)}")
    lines.append(f"  logs: {result.out_dir}/metrics.jsonl, TensorBoard: tensorboard --logdir {result.out_dir}/tb")
    return lines
