"""The `compress-cache` command: one sub-command per stage, each defined in its own module here.

Options map one-to-one to `params.yaml` keys, so `dvc.yaml` and a person at a shell say the same thing.
A `CompressError` anywhere becomes a one-line `Error: ...` and exit code 1, never a traceback.
"""
from __future__ import annotations

import importlib

import click

from cache.errors import CacheError
from pipeline.runtime.errors import CompressError

# sub-command name -> (module under stages.cli defining a click command called `command`, its line in
# `compress-cache --help`). The lines are kept here so that the listing imports no sub-command (each imports
# torch: seconds); tests/test_cli_help.py checks that each is the first sentence of its command's own help.
_COMMANDS = {
    "prepare": ("prepare", "Pack a dataset into a uint8 image store with a fingerprinted manifest."),
    "teacher": ("teacher", "Import a teacher checkpoint, or pretrain one with MoCo v2 when none is given."),
    "extract": ("extract", "Run the frozen teacher once and cache its l2-normalised embeddings in a sharded Zarr "
                           "store."),
    "info": ("info", "Rows, dim, dtype, views, teacher, data fingerprint, completion and size of a cache."),
    "verify": ("verify", "Re-check every shard of a cache or every block of an image store; exit 1 naming each bad "
                         "one."),
    "train": ("train", "Train a student (or, with --method moco, a model from scratch)."),
    "eval": ("evaluate", "Evaluate one model: NN, kNN-20, linear probe and cluster assignment, written as DVC "
                         "metrics."),
    "report": ("report", "Compare teacher, students and random-init references: NN / kNN-20 / Linear / CA "
                         "(top-1 %)."),
    "export": ("export", "Export the student backbone of RUN_DIR/model.pt, checked against the training-time "
                         "embedding."),
}


class _Group(click.Group):
    """Loads each sub-command lazily (torch imports are slow) and turns CompressError into one line."""

    def list_commands(self, ctx):
        return list(_COMMANDS)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in _COMMANDS.items()])

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module = _COMMANDS[name][0]
        try:
            return importlib.import_module(f"stages.cli.{module}").command
        except ModuleNotFoundError as e:
            if e.name == f"stages.cli.{module}":
                return None  # not built yet
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (CompressError, CacheError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # an I/O failure no stage words itself (issue 16): still one line, the path, the cause
            raise click.ClickException(f"{e.filename or 'I/O'}: {e.strerror or e}; fix the cause and re-run the "
                                       f"same command") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compress-cache")
def main():
    """compress-cache: distil a frozen self-supervised teacher into small students (CompRess),
    through a teacher feature cache computed once.

    \b
    Example, the whole path on the embedded digits data:
      compress-cache prepare --dataset digits --out data/digits
      compress-cache teacher --data data/digits --out runs/teacher --arch resnet18_w32 --small-input \\
          --input-size 8 --epochs 30 --batch-size 64 --bank-size 256 --no-hflip
      compress-cache extract --data data/digits --weights runs/teacher/model.pt --out runs/teacher.zarr
      compress-cache train --data data/digits --cache runs/teacher.zarr --student resnet18_w16 \\
          --small-input --input-size 8 --epochs 10 --no-hflip --out runs/r18w16
      compress-cache eval --data data/digits --model runs/r18w16/model.pt --out metrics/r18w16.json
      compress-cache report --metrics metrics

    The whole path is also `dvc repro` (dvc.yaml, params.yaml).
    """
