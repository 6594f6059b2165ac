from pathlib import Path

import click

from stages.cli.options import config_options
from stages.teacher import TeacherConfig, make_teacher
from stages.train_config import PRESETS, TrainConfig, config_from_dict

# the training settings that pretraining takes (MoCo v2 from scratch; defaults: the moco-pretrain preset)
PRETRAINING = ("student", "small_input", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
               "warmup_epochs", "bank_size", "tau", "ema", "moco_dim", "exclude_own_keys", "augment", "crop_scale_min",
               "hflip", "seed", "device", "amp", "checkpoint_every", "snapshot_every", "tensorboard", "restart")


@click.command("teacher")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Image store (from `prepare`).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for the teacher; the artifact is OUT/model.pt.")
@click.option("--weights", default="",
              help="Checkpoint to import (MoCo/SwAV/SimCLR/DINO/torchvision/model file). "
                   "Empty or absent: a teacher is pretrained with MoCo v2 on --data.")
@click.option("--weights-format", default="auto", show_default=True)
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              show_default="import: the format's; pretraining: 32",
              help="Input side in pixels (import: overrides the format's 224; pretraining: the crop size).")
@click.option("--crop-fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Import: centre-crop fraction (224/256 = 0.875).")
@config_options(TrainConfig, only=PRETRAINING, preset=PRESETS["moco-pretrain"], rename={"student": "--arch"})
def command(data, out, weights, weights_format, input_size, crop_fraction, **pretrain):
    """Import a teacher checkpoint, or pretrain one with MoCo v2 when none is given.

    \b
    Examples:
      compress-cache teacher --data data/digits --out artifacts/teacher --arch resnet18_w32 \\
          --small-input --input-size 8 --epochs 30 --batch-size 64 --bank-size 256 --no-hflip
      compress-cache teacher --data data/in1k --out artifacts/r50 --weights moco_v2_800ep.pth.tar
    """
    weights = Path(weights) if weights else None
    settings = None
    if weights is None:
        settings = config_from_dict({"data": data, "out": out, "preset": "moco-pretrain", "input_size": input_size,
                                     **pretrain})
    path = make_teacher(TeacherConfig(data=data, out=out, weights=weights, weights_format=weights_format,
                                      input_size=input_size, crop_fraction=crop_fraction, pretrain=settings))
    click.echo(f"teacher written to {path}")
