from pathlib import Path

import click

from stages.prepare import DATASETS, REPORT, PrepareConfig, prepare


@click.command("prepare")
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
              help="Source to pack. digits is embedded in scikit-learn (no download); fashion-mnist reads "
                   "/usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist) by default.")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Folder or file of the source: the python-format CIFAR folder, the ImageFolder root "
                   "(with train/ and val/ subfolders, or class folders and a fixed split), or an .h5 file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Image-store folder to write.")
@click.option("--size", type=click.IntRange(min=4), default=None,
              help="Pre-resize: short side to SIZE px, then centre crop to SIZE x SIZE (default: native). "
                   "Pick a little above the training resolution; crops are taken from these pixels.")
@click.option("--skip-bad", is_flag=True,
              help="Leave out images that cannot be decoded (listed in the manifest's `skipped`) instead "
                   "of failing.")
@click.option("--workers", type=click.IntRange(min=0), default=PrepareConfig.workers, show_default=True,
              help="Decoding processes for image files (one thread each); 0 decodes in this process.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Keep only the first N items of the source's order, before decoding (smoke runs).")
@click.option("--block", type=click.IntRange(min=1), default=None,
              help="Images decoded per window, each a resume point for a killed run (default: ~64 MiB of "
                   "pixels, 64-4096 images).")
def command(dataset, source, out, size, skip_bad, workers, limit, block):
    """Pack a dataset into a uint8 image store with a fingerprinted manifest.

    \b
    Examples:
      compress-cache prepare --dataset digits --out data/digits
      compress-cache prepare --dataset fashion-mnist --out data/fmnist --size 32
      compress-cache prepare --dataset imagefolder --source ~/imagenet --out data/in64 --size 72
    """
    m = prepare(PrepareConfig(dataset=dataset, out=out, source=source, size=size, skip_bad=skip_bad,
                              workers=workers, limit=limit, block=block))
    click.echo(f"wrote {out}: {m['n']} images {tuple(m['shape'])}, {m['num_classes']} classes, "
               f"train {m['splits']['train']} / val {m['splits']['val']}, fingerprint {m['fingerprint'][:12]}")
    if m["skipped"]:
        click.echo(f"skipped {len(m['skipped'])} unreadable images (manifest `skipped`, {out / REPORT})")
