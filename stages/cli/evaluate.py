import click

from stages.cli.options import config_from_options, config_options
from stages.evaluate import EvaluateConfig, evaluate


@click.command("eval")
@config_options(EvaluateConfig)
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
    cfg = config_from_options(EvaluateConfig, kw)
    if cfg.out.is_dir():  # before the evaluation runs, not after it
        raise click.UsageError(f"--out {cfg.out} is a folder; name the metrics JSON file to write, e.g. "
                               f"{cfg.out / 'metrics.json'}")
    cfg.probe_batch_size = cfg.probe_batch_size or None  # 0: full batch
    m = evaluate(cfg)
    agree = f"  agree10 {m['agree10']:.3f}  agree1 {m['agree1']:.3f}" if "agree10" in m else ""
    click.echo(f"{m['name']}: NN {m['nn']:.2f}  kNN-{cfg.knn_k} {m['knn20']:.2f}  "
               f"linear ({cfg.probe} probe) {m['linear']:.2f}  "
               f"CA {m['ca']:.2f} (count score {m['ca_count']:.2f}){agree}  -> {cfg.out}")
