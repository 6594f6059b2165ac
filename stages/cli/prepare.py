import click

from stages.cli.options import config_from_options, config_options
from stages.prepare import REPORT, PrepareConfig, prepare


@click.command("prepare")
@config_options(PrepareConfig)
def command(**options):
    """Pack a dataset into a uint8 image store with a fingerprinted manifest.

    \b
    Examples:
      compress-cache prepare --dataset digits --out data/digits
      compress-cache prepare --dataset fashion-mnist --out data/fmnist --size 32
      compress-cache prepare --dataset imagefolder --source ~/imagenet --out data/in64 --size 72
    """
    cfg = config_from_options(PrepareConfig, options)
    out = cfg.out
    m = prepare(cfg)
    click.echo(f"wrote {out}: {m['n']} images {tuple(m['shape'])}, {m['num_classes']} classes, "
               f"train {m['splits']['train']} / val {m['splits']['val']}, fingerprint {m['fingerprint'][:12]}")
    if m["skipped"]:
        click.echo(f"skipped {len(m['skipped'])} unreadable images (manifest `skipped`, {out / REPORT})")
