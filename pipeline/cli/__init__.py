"""The `compress-cache` command: one sub-command per stage, each defined in its own module here.

Options map one-to-one to `params.yaml` keys, so `dvc.yaml` and a person at a shell say the same thing.
A `CompressError` anywhere becomes a one-line `Error: ...` and exit code 1, never a traceback.
"""
from __future__ import annotations

import importlib

import click

from cache.errors import CacheError
from pipeline.errors import CompressError

# sub-command name -> module under pipeline.cli defining a click command called `command`
_COMMANDS = {
    "prepare": "prepare",
    "teacher": "teacher",
    "extract": "extract",
    "info": "info",
    "verify": "verify",
    "train": "train",
    "eval": "evaluate",
    "report": "report",
    "export": "export",
}


class _Group(click.Group):
    """Loads each sub-command lazily (torch imports are slow) and turns CompressError into one line."""

    def list_commands(self, ctx):
        return list(_COMMANDS)

    def get_command(self, ctx, name):
        module = _COMMANDS.get(name)
        if module is None:
            return None
        try:
            return importlib.import_module(f"pipeline.cli.{module}").command
        except ModuleNotFoundError as e:
            if e.name == f"pipeline.cli.{module}":
                return None  # not built yet
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (CompressError, CacheError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compress-cache")
def main():
    """compress-cache: distil a frozen self-supervised teacher into small students (CompRess),
    through a teacher feature cache computed once.

    \b
    Example, the whole path on the embedded digits data:
      compress-cache prepare --dataset digits --out data/digits
      compress-cache teacher --data data/digits --out runs/teacher --arch resnet18_w32 \\
          --input-size 8 --epochs 30 --batch-size 64 --bank-size 256 --no-hflip
      compress-cache extract --data data/digits --weights runs/teacher/model.pt --out runs/teacher.zarr
      compress-cache train --data data/digits --cache runs/teacher.zarr --student resnet18_w16 \\
          --input-size 8 --epochs 10 --no-hflip --out runs/r18w16
      compress-cache eval --data data/digits --model runs/r18w16/model.pt --out metrics/r18w16.json
      compress-cache report --metrics metrics

    The whole path is also `dvc repro` (dvc.yaml, params.yaml).
    """
