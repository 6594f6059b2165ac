from pathlib import Path

import click

from stages.evaluate import EvaluateConfig, evaluate

_PATH = click.Path(path_type=Path)


@click.command("eval")
@click.option("--data", type=_PATH, required=True, help="Image-store folder (from `compress-cache prepare`).")
@click.option("--model", type=_PATH, default=None, help="A model file (model.pt) written by `compress-cache train`.")
@click.option("--cache", type=_PATH, default=None, help="A teacher cache (.zarr): evaluates the teacher itself.")
@click.option("--random-init", default=None, metavar="ARCH",
              help="A randomly initialised ARCH (seeded): the floor every trained model should beat.")
@click.option("--small-input", is_flag=True, help="With --random-init: the 8-64 px stem.")
@click.option("--input-size", type=int, default=None, help="With --random-init: input side (default: the images').")
@click.option("--out", type=_PATH, required=True, help="Metrics JSON to write, e.g. metrics/mnv2.json.")
@click.option("--name", default=None, help="Row name in the report (default: the file name of --out).")
@click.option("--knn-k", type=int, default=20, show_default=True, help="Neighbours that vote in kNN.")
@click.option("--knn-tau", type=float, default=0.07, show_default=True, help="Vote temperature: weight exp(cos/tau).")
@click.option("--ca-clusters", type=int, default=None,
              help="k-means clusters for cluster assignment (default: number of classes; paper: 1000).")
@click.option("--probe", type=click.Choice(["cached", "augmented"]), default="cached", show_default=True,
              help="Linear probe. cached: on the evaluation-view features computed once (fast). augmented: the "
                   "paper's, RandomResizedCrop + flip views rendered every epoch through the frozen network "
                   "(one forward pass over the train set per epoch; needs --model or --random-init).")
@click.option("--probe-epochs", type=int, default=40, show_default=True,
              help="Linear-probe epochs; the lr drops x0.1 at 15/40 and 30/40 of them (paper schedule). "
                   "SGD lr 0.01, momentum 0.9, weight decay 1e-4; the last epoch's head is reported.")
@click.option("--probe-batch-size", type=int, default=256, show_default=True, help="0 trains full-batch.")
@click.option("--probe-crop-scale-min", type=float, default=0.08, show_default=True,
              help="--probe augmented: RandomResizedCrop scale (MIN, 1); 0.08 is torchvision's and the paper's.")
@click.option("--probe-hflip/--no-probe-hflip", default=True, show_default=True,
              help="--probe augmented: random horizontal flips (the paper's); off for data where a mirror image "
                   "is another class (digits).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds k-means, the probe and random init.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--figures", type=_PATH, default=None,
              help="Folder for the confusion-matrix and retrieval-grid PNGs (the grid: val queries and their "
                   "neighbours under this model).")
@click.option("--compare-cache", type=_PATH, default=None,
              help="The teacher's cache (.zarr): adds the teacher agreement agree10 (mean overlap of the 10 "
                   "nearest train images, student vs teacher) and agree1 (same nearest image) to the metrics; "
                   "with --figures the grid shows the teacher's neighbours beside this model's.")
@click.option("--compare-model", type=_PATH, default=None,
              help="As --compare-cache, for a reference given as a model file.")
@click.option("--features-dir", type=_PATH, default=None,
              help="Folder for the keyed feature files (default: beside --out).")
def command(**kw):
    """Evaluate one model: NN, kNN-20, linear probe and cluster assignment, written as DVC metrics.

    \b
    Examples:
      compress-cache eval --data data/digits --cache runs/teacher.zarr --out metrics/teacher.json
      compress-cache eval --data data/digits --model runs/mnv2/model.pt --out metrics/mnv2.json \\
          --compare-cache runs/teacher.zarr --figures figures
      compress-cache eval --data data/digits --random-init resnet18 --small-input --out metrics/random.json
      compress-cache eval --data data/in1k --model runs/r18/model.pt --probe augmented --out metrics/r18.json
    """
    if kw["out"].is_dir():  # before the evaluation runs, not after it
        raise click.UsageError(f"--out {kw['out']} is a folder; name the metrics JSON file to write, e.g. "
                               f"{kw['out'] / 'metrics.json'}")
    kw["probe_batch_size"] = kw["probe_batch_size"] or None
    m = evaluate(EvaluateConfig(**kw))
    agree = f"  agree10 {m['agree10']:.3f}  agree1 {m['agree1']:.3f}" if "agree10" in m else ""
    click.echo(f"{m['name']}: NN {m['nn']:.2f}  kNN-{kw['knn_k']} {m['knn20']:.2f}  "
               f"linear ({kw['probe']} probe) {m['linear']:.2f}  "
               f"CA {m['ca']:.2f} (count score {m['ca_count']:.2f}){agree}  -> {kw['out']}")
