"""`compress-cache export`: a trained student backbone as a deployable file plus its preprocessing."""
from pathlib import Path

import click

from stages.export import EXPORT_FORMATS, ExportConfig, export


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="torchscript", show_default=True,
              help="torchscript runs without this package or torchvision; state-dict is plain torchvision-named "
                   "tensors; onnx needs the onnx package.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="File to write (default: RUN_DIR/export/<arch>.<ext>); the preprocessing goes to OUT.json.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest allowed difference from the training-time embedding on a probe batch.")
def command(run_dir, fmt, out, tolerance):
    """Export the student backbone of RUN_DIR/model.pt, checked against the training-time embedding.
    Train-time heads are already dropped; a JSON sidecar holds its preprocessing.

    \b
    Example:
      compress-cache export runs/mnv2 --format torchscript
      compress-cache export runs/mnv2 --format state-dict --out deploy/mnv2.pth
    """
    s = export(ExportConfig(run_dir=run_dir, format=fmt, out=out, tolerance=tolerance))
    diff = f"max diff {s['check']['max_abs_diff']:.2g}" if s["check"]["checked"] else "not re-run (no runtime)"
    click.echo(f"wrote {s['path']} ({fmt}, {s['arch']}, {s['embed_dim']}-d, {diff}) and {s['file']}.json "
               f"(preprocessing: input {s['preprocessing']['input_size']} px, mean {s['preprocessing']['mean']}, "
               f"std {s['preprocessing']['std']})")
