"""`compress-cache extract`: the teacher cache, on one process or under torchrun."""
from pathlib import Path

import click

from pipeline.models.checkpoint_formats import FORMATS
from pipeline.runtime.distributed import env_world
from pipeline.models.teachers import EMBEDDINGS
from stages.extract import ExtractConfig, extract


@click.command("extract")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Image store from `prepare`.")
@click.option("--teacher", default=None,
              help="Teacher architecture, e.g. resnet50, dinov2_vits14, timm:NAME (default: read from --weights; "
                   "timm models need it).")
@click.option("--weights", type=click.Path(path_type=Path), required=True, help="Teacher checkpoint file.")
@click.option("--weights-format", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Checkpoint format; auto detects it from the keys (and an export's sidecar FILE.json).")
@click.option("--embedding", type=click.Choice(EMBEDDINGS), default="backbone", show_default=True,
              help="backbone: the pooled feature (ViTs: CLS after the final norm); head: the checkpoint's projection "
                   "head; cls+avgpool: ViTs only, CLS and the mean patch token (DINOv2's linear-probe feature).")
@click.option("--input-size", type=int, default=None,
              help="Input side in px instead of the teacher's own (official formats: 224); a ViT's must be a "
                   "multiple of its patch. Recorded in the cache.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Zarr store to write, e.g. runs/teacher.zarr.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="float16 halves disk and RAM; a unit row's self-dot and any dot product move by less than "
                   "1e-3 (measured: up to 5.4e-4 at 64-d, 9e-5 at 2048-d; benchmarks/fp16_cosine.py).")
@click.option("--views", type=click.IntRange(min=1), default=1, show_default=True,
              help="Views per image. >1 adds RandomResizedCrop+flip views (view 0 = centre) and stores their crops.")
@click.option("--view-seed", type=int, default=0, show_default=True, help="Seed of the augmented views.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per forward pass.")
@click.option("--shard-rows", type=click.IntRange(min=0), default=0, show_default=True,
              help="Rows per shard (the unit of writing and resuming); 0 picks ~32 MiB shards.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Rebuild a store made for another request instead of refusing.")
@click.option("--amp", type=click.Choice(["auto", "none", "bf16", "fp16"]), default="auto", show_default=True,
              help="Autocast of the teacher's forward: auto is bf16 on a GPU and none on the CPU (recorded in the "
                   "cache; rows differ from full precision by about the fp16 storage error).")
@click.option("--rebuild-if-changed", is_flag=True,
              help="Rebuild the store when it was made for another request or by other code; resume or reuse it "
                   "otherwise (what dvc.yaml passes).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs, CI).")
def command(data, teacher, weights, weights_format, embedding, input_size, out, dtype, views, view_seed, batch_size,
            shard_rows, device, overwrite, amp, rebuild_if_changed, no_progress):
    """Run the frozen teacher once and cache its l2-normalised embeddings in a sharded Zarr store.

    Re-running the same command resumes an interrupted run (verified shards are kept) or does nothing when
    the store is complete. Under torchrun each process writes its own whole shards; the store is identical.

    \b
    Examples:
      compress-cache extract --data data/digits --teacher resnet18 --weights runs/teacher/model.pt --out runs/teacher.zarr
      torchrun --nproc_per_node=4 -m stages extract --data data/in1k --weights r50.pt --out runs/r50.zarr
    """
    cfg = ExtractConfig(data=data, weights=weights, out=out, teacher=teacher, weights_format=weights_format,
                        embedding=embedding, input_size=input_size, dtype=dtype, views=views, view_seed=view_seed,
                        batch_size=batch_size, shard_rows=shard_rows, device=device, overwrite=overwrite,
                        amp=amp, rebuild_if_changed=rebuild_if_changed, progress=not no_progress)
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
