from pathlib import Path

import click

from pipeline.methods import METHODS
from stages.train import PRESETS, TrainConfig, config_from_dict, train

_D = TrainConfig.__dataclass_fields__


def _default(name):
    return _D[name].default


@click.command("train")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Image store (from `prepare`).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Teacher cache (from `extract`); needed by every distillation method unless "
                   "--teacher-source live.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder. Re-running the same command resumes from its checkpoint.")
@click.option("--student", default=_default("student"), show_default=True,
              help="Student architecture: resnet18, resnet34, resnet50, mobilenet_v2, alexnet or any "
                   "torchvision classification model name.")
@click.option("--small-input/--imagenet-stem", default=_default("small_input"), show_default=True,
              help="3x3 stride-1 stem without max-pool, for 8-64 px images.")
@click.option("--method", type=click.Choice(list(METHODS)), default=_default("method"), show_default=True)
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Starting values for the settings below (explicit options win): paper-imagenet (the "
                   "defaults), small (a few thousand small images), tiny (tests, seconds).")
@click.option("--teacher-source", type=click.Choice(["cached", "live"]), default=None,
              help="cached (default): teacher embeddings are rows of --cache. live: run the frozen teacher "
                   "of --teacher-weights on every step's crops (slower; the paper's setting).")
@click.option("--teacher-weights", type=click.Path(path_type=Path), default=None,
              help="Teacher checkpoint for --teacher-source live (any format `extract` reads).")
@click.option("--teacher-arch", default=None, help="Teacher architecture, when the weights do not tell it.")
@click.option("--epochs", type=int, default=None, help="Paper: 130.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Budget in optimiser steps instead of --epochs (may end inside an epoch); the schedule spans it.")
@click.option("--batch-size", type=int, default=None, help="Per process. Paper: 256.")
@click.option("--lr", type=float, default=None, help="SGD learning rate. Paper: 0.01.")
@click.option("--momentum", type=float, default=None)
@click.option("--weight-decay", type=float, default=None, help="Paper: 1e-4.")
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default=None)
@click.option("--milestones", type=str, default=None, help="Comma-separated epochs for the step schedule (paper: 90,120).")
@click.option("--lr-gamma", type=float, default=None, help="Step-schedule factor (paper: 0.2).")
@click.option("--warmup-epochs", type=float, default=None)
@click.option("--bank-size", type=int, default=None, help="Anchors K in the queue(s). Paper: 128000.")
@click.option("--tau", type=float, default=None, help="Temperature. Paper: 0.04 (CompRess), 0.2 (MoCo v2).")
@click.option("--ema", type=float, default=None, help="Momentum of the EMA student / key encoder. Paper: 0.999.")
@click.option("--exclude-own-keys/--keep-own-keys", default=None,
              help="MoCo: drop negatives that are the query's own image, still queued from an earlier epoch "
                   "(for small data; default keep, as MoCo does).")
@click.option("--crd-dim", type=int, default=None, help="CRD: width of both linear embeddings (128).")
@click.option("--crd-negatives", type=int, default=None, help="CRD: negatives drawn from memory per step (16384).")
@click.option("--crd-tau", type=float, default=None, help="CRD: temperature (0.07).")
@click.option("--crd-memory-momentum", type=float, default=None, help="CRD: memory momentum (0.5).")
@click.option("--seed-tau-student", type=float, default=None, help="SEED: student temperature (0.2).")
@click.option("--seed-tau-teacher", type=float, default=None, help="SEED: teacher temperature (0.01).")
@click.option("--clusters", type=int, default=None,
              help="CC: k-means clusters of the teacher features (default 10 x classes; paper 16000).")
@click.option("--input-size", type=int, default=None, help="Side of the student's input crop in pixels.")
@click.option("--crop-scale-min", type=float, default=None, help="RandomResizedCrop lower scale (0.2).")
@click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips.")
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default=None,
              help="Mixed precision: bf16 autocast (CPU/GPU) or fp16 with a scaler (GPU).")
@click.option("--channels-last/--no-channels-last", default=None, help="Helps MobileNetV2 on CPU.")
@click.option("--bn-groups", type=int, default=None,
              help="BatchNorm statistics over N equal slices of the batch, as N DDP processes compute them (1).")
@click.option("--checkpoint-every", type=int, default=None, help="Steps between checkpoints; 0 = every epoch.")
@click.option("--tensorboard/--no-tensorboard", default=None)
def command(milestones, **options):
    """Train a student (or, with --method moco, a model from scratch).

    \b
    Example (CompRess-2q from a cached teacher, then resume by re-running it):
      compress-cache train --data data/digits --cache artifacts/teacher.zarr \\
          --student mobilenet_v2 --method compress-2q --out runs/mnv2 --epochs 30 --input-size 16
    On 2 processes (gloo on CPU, NCCL on GPU), --batch-size per process:
      torchrun --nproc_per_node=2 -m pipeline train --data ... --cache ... --out runs/ddp
    """
    if milestones is not None:
        options["milestones"] = tuple(int(m) for m in milestones.split(",") if m.strip())
    result = train(config_from_dict(options))
    if result["rank"] == 0:
        click.echo(f"trained {result['steps']} steps; student written to {result['out']}/model.pt")
