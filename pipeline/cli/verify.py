"""`compress-cache verify`: re-read every shard against its recorded checksum."""
from pathlib import Path

import click

from cache.verify import verify_store


@click.command("verify")
@click.argument("store", type=click.Path(path_type=Path))
def command(store):
    """Re-check every shard of a cache; exit 1 naming each bad shard.

    \b
    Example:
      compress-cache verify runs/teacher.zarr
    """
    problems = verify_store(store)  # a CacheError becomes a one-line error in the command group
    if problems:
        for p in problems:
            click.echo(f"{store}: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{store}: every shard matches its checksum")
