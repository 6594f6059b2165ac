"""`compress-cache extract`: the teacher cache, on one process or under torchrun."""
import click

from pipeline.runtime.distributed import env_world
from stages.cli.options import config_from_options, config_options
from stages.extract import ExtractConfig, extract


@click.command("extract")
@config_options(ExtractConfig)
def command(**options):
    """Run the frozen teacher once and cache its l2-normalised embeddings in a sharded Zarr store.

    Re-running the same command resumes an interrupted run (verified shards are kept) or does nothing when
    the store is complete. Under torchrun each process writes its own whole shards; the store is identical.

    \b
    Examples:
      compress-cache extract --data data/digits --teacher resnet18 --weights runs/teacher/model.pt --out runs/teacher.zarr
      torchrun --nproc_per_node=4 -m stages extract --data data/in1k --weights r50.pt --out runs/r50.zarr
    """
    cfg = config_from_options(ExtractConfig, options)
    out = cfg.out
    result = extract(cfg)  # a CacheError becomes a one-line error in the command group
    a = result["attributes"]
    if env_world().is_main:
        t = a["teacher"]
        click.echo(f"teacher: {t['arch']} ({t['format']} checkpoint, {t['embedding']} embedding, "
                   f"{t['embed_dim']}-d, {t['preprocessing']['input_size']} px)")
        if result["repaired"]:
            click.echo(f"{out} was marked complete but shards {result['repaired'][:8]} no longer matched their "
                       f"checksums: re-extracted them")
        verb = "wrote" if result["shards_written"] else "already complete (every shard re-checked):"
        speed = result["rows_written"] / max(result["seconds"], 1e-9)
        click.echo(f"{verb} {out}: {a['n']} x {a['views']} x {a['dim']} {a['dtype']}, {a['num_shards']} shards "
                   f"({result['shards_written']} written now, {speed:.0f} img/s)")
