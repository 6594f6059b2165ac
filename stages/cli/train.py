import click

from stages.cli.options import config_options
from stages.train import train
from stages.train_config import PRESETS, TrainConfig, config_from_dict


@click.command("train")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Starting values for the settings below (explicit options win): paper-imagenet (the "
                   "defaults), small (a few thousand small images), moco-pretrain (`teacher`'s pretraining), tiny (tests, seconds).")
@config_options(TrainConfig)
def command(**options):
    """Train a student (or, with --method moco, a model from scratch).

    \b
    Example (CompRess-2q from a cached teacher, then resume by re-running it):
      compress-cache train --data data/digits --cache artifacts/teacher.zarr \\
          --student resnet18_w16 --small-input --input-size 8 --no-hflip \\
          --method compress-2q --out runs/r18w16 --epochs 10
    On 2 processes (gloo on CPU, NCCL on GPU), --batch-size per process:
      torchrun --nproc_per_node=2 -m stages train --data ... --cache ... --out runs/ddp
    The defaults are the paper's ImageNet recipe (ResNet-18 with the ImageNet stem at 224 px, K 128,000,
    tau 0.04, SGD 0.01, 130 epochs, RandomResizedCrop 0.08-1 + flip).
    """
    result = train(config_from_dict(options))
    if result["rank"] == 0:
        click.echo(f"trained {result['steps']} steps; student written to {result['out']}/model.pt")
