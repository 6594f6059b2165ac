from pathlib import Path

import click

from stages.teacher import TeacherConfig, make_teacher
from pipeline.data.augment import RECIPES
from stages.train_config import config_from_dict


@click.command("teacher")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Image store (from `prepare`).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for the teacher; the artifact is OUT/model.pt.")
@click.option("--weights", default="",
              help="Checkpoint to import (MoCo/SwAV/SimCLR/DINO/torchvision/model file). "
                   "Empty or absent: a teacher is pretrained with MoCo v2 on --data.")
@click.option("--weights-format", default="auto", show_default=True)
@click.option("--input-size", type=int, default=None, show_default="import: the format's; pretraining: 32",
              help="Input side in pixels (import: overrides the format's 224; pretraining: the crop size).")
@click.option("--crop-fraction", type=float, default=None, help="Import: centre-crop fraction (224/256 = 0.875).")
@click.option("--arch", default="resnet18", show_default=True, help="Pretraining: the teacher architecture.")
@click.option("--small-input/--imagenet-stem", default=False, show_default=True,
              help="Pretraining: 3x3 stride-1 stem without max-pool, for 8-64 px images.")
@click.option("--epochs", type=int, default=100, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=0.06, show_default=True)
@click.option("--bank-size", type=int, default=4096, show_default=True, help="MoCo queue length.")
@click.option("--tau", type=float, default=0.2, show_default=True, help="InfoNCE temperature (MoCo v2: 0.2).")
@click.option("--ema", type=float, default=0.99, show_default=True, help="Key-encoder momentum.")
@click.option("--exclude-own-keys/--keep-own-keys", default=False, show_default=True,
              help="Drop negatives that are the query's own image, still queued from an earlier epoch "
                   "(small data).")
@click.option("--augment", type=click.Choice(list(RECIPES)), default="mocov2", show_default=True,
              help="Pretraining augmentation: mocov2 (crop 0.2-1, colour jitter, grayscale, blur, flip) or "
                   "crop-flip.")
@click.option("--crop-scale-min", type=float, default=None, show_default="the recipe's: mocov2 0.2, crop-flip 0.08",
              help="RandomResizedCrop lower scale.")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="Pretraining: SGD weight decay.")
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default="cosine", show_default=True,
              help="Pretraining: learning-rate schedule.")
@click.option("--hflip/--no-hflip", default=True, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default="none", show_default=True)
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True)
@click.option("--restart", type=click.Choice(["never", "if-changed", "always"]), default="never", show_default=True,
              help="Pretraining: when --out holds a run, resume it (never), start it over when its settings or "
                   "code differ (if-changed, dvc.yaml's choice), or always start over.")
def command(data, out, weights, weights_format, input_size, crop_fraction, arch, **pretrain):
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
        settings = config_from_dict({"data": data, "out": out, "student": arch, "method": "moco",
                                     "input_size": input_size or 32, **pretrain})
    path = make_teacher(TeacherConfig(data=data, out=out, weights=weights, weights_format=weights_format,
                                      input_size=input_size, crop_fraction=crop_fraction, pretrain=settings))
    click.echo(f"teacher written to {path}")
