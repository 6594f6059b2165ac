from pathlib import Path

import click

from stages.report import ReportConfig, report


@click.command("report")
@click.option("--metrics", type=click.Path(path_type=Path), default=Path("metrics"), show_default=True,
              help="Folder of metrics JSON files written by `compress-cache eval`.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Markdown file for the table (e.g. metrics/summary.md); the table is printed either way.")
def command(metrics, out):
    """Compare teacher, students and random-init references: NN / kNN-20 / Linear / CA (top-1 %).

    \b
    Example:
      compress-cache report --metrics metrics --out metrics/summary.md
    """
    click.echo(report(ReportConfig(metrics=metrics, out=out)))
