"""`compress-cache info`: what a teacher cache holds, without reading its shards."""
import json
from pathlib import Path

import click

from cache.verify import info


@click.command("info")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
def command(store, as_json):
    """Rows, dim, dtype, views, teacher, data fingerprint, completion and size of a cache.

    \b
    Example:
      compress-cache info runs/teacher.zarr
    """
    d = info(store)  # a CacheError becomes a one-line error in the command group
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    t = d["teacher"]
    click.echo(f"{d['path']}: {d['rows']} rows x {d['views']} views x {d['dim']} {d['dtype']}\n"
               f"  teacher   {t.get('arch')} ({t.get('format')}, {t.get('embedding')}), "
               f"weights sha256 {str(t.get('weights_sha256'))[:12]}\n"
               f"  data      fingerprint {d['data_fingerprint'][:12]}\n"
               f"  shards    {d['shards_done']}/{d['shards_total']} of {d['shard_rows']} rows, "
               f"{'complete' if d['complete'] else 'INCOMPLETE'}\n"
               f"  size      {d['size_bytes'] / 2**20:.1f} MiB on disk, created {d['created']}")
