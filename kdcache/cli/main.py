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


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

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
