from pathlib import Path

import click

from stages.prepare import DATASETS, PrepareConfig, prepare


@click.command("prepare")
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
              help="Source to pack. digits is embedded in scikit-learn (no download).")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Folder or file of the source, for datasets that are not embedded.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Image-store folder to write.")
@click.option("--size", type=int, default=None, help="Pre-resize images to SIZE x SIZE pixels (default: native).")
def command(dataset, source, out, size):
    """Pack a dataset into a uint8 image store with a fingerprinted manifest.

    \b
    Example:
      compress-cache prepare --dataset digits --out data/digits
    """
    m = prepare(PrepareConfig(dataset=dataset, out=out, source=source, size=size))
    click.echo(f"wrote {out}: {m['n']} images {tuple(m['shape'])}, {m['num_classes']} classes, "
               f"train {m['splits']['train']} / val {m['splits']['val']}, fingerprint {m['fingerprint'][:12]}")
