"""The ``kdcache`` command line. Each sub-command lives in its own module and is imported lazily,
so ``kdcache --help`` stays fast and a broken optional dependency only affects its command."""

from __future__ import annotations

import importlib
import os

import click

from kdcache.cli.common import DEBUG_ENV
from kdcache.version import __version__

# name -> "module:function"
COMMANDS: dict[str, str] = {
    "preview": "kdcache.cli.preview:preview",
    "build": "kdcache.cli.build:build",
    "verify": "kdcache.cli.verify:verify",
    "train": "kdcache.cli.train:train",
    "info": "kdcache.cli.info:info",
    "show": "kdcache.cli.show:show",
    "export": "kdcache.cli.export:export",
    "demo": "kdcache.cli.demo:demo",
    "ls": "kdcache.cli.ls:ls",
    "rm": "kdcache.cli.rm:rm",
}


# name -> the first paragraph of the command's help: `kdcache --help` lists these without importing the
# commands (which import torch); tests/test_cli_help.py holds them equal to the commands' own.
SUMMARIES: dict[str, str] = {
    "build": "Run the teacher once on every view of EPOCHS epochs and write its soft labels (top-k; format 2 "
    "adds a 4-bit tail, format 3 draws from the rest).",
    "demo": "Teacher, cache and students on scikit-learn's digits (1,797 real 8x8 handwritten digits), offline.",
    "export": "Convert CACHE to the zarr (random access) or wds (streaming) backend.",
    "info": "Summarise CACHE: teacher, dataset, recipe, complete epochs, size on disk, content hash.",
    "ls": "List the caches in the registry, most recently used first: key, format, teacher, dataset, complete "
    "epochs, views, size, created and last used.",
    "preview": "Render views exactly as `build` will show them to the teacher.",
    "rm": "Delete cache KEY (a key from `kdcache ls`, or a unique prefix of at least 4 characters).",
    "show": "Print what CACHE stores for slots A:B of an epoch: sample, repeat, view params, digest and the "
    "teacher's top-k classes with probabilities.",
    "train": "Train a student on the cache's views; the teacher never runs (unless --kd online).",
    "verify": "Re-render sampled views and compare their digests; re-run the teacher and compare the stored "
    "top-k at the precision the manifest records.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from SUMMARIES: click's own would import every command to read its help."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES[name]) for name in self.list_commands(ctx)])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kdcache")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the Python traceback of user errors too (same as KDCACHE_DEBUG=1); bugs always show one.",
)
def cli(debug: bool) -> None:
    """kdcache: run the teacher once, offline, on exactly the views every student will replay.

    \b
    Typical use:
      kdcache build --teacher beit_base --data /data/imagenet/train --out cache/
      kdcache train --student resnet50 --cache cache/ --out runs/r50

    \b
    Or let the registry keep the caches (KDCACHE_HOME, --cache-root):
      kdcache build --teacher beit_base --data /data/imagenet/train
      kdcache train --teacher beit_base --data /data/imagenet/train --out runs/r50
      kdcache ls; kdcache rm KEY

    Mistakes in options or inputs are reported in one line (exit status 1); --debug shows the traceback.
    """
    if debug:
        # An environment variable, so torchrun's worker processes and lazily loaded commands see it too.
        os.environ[DEBUG_ENV] = "1"


def main() -> None:
    cli(prog_name="kdcache")
