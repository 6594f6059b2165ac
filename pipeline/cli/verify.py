"""`compress-cache verify`: re-read every shard against its recorded checksum."""
from pathlib import Path

import click

from cache.errors import CacheError
from cache.verify import verify_store


@click.command("verify")
@click.argument("store", type=click.Path(path_type=Path))
def command(store):
    """Re-check every shard of a cache; exit 1 naming each bad shard.

    \b
    Example:
      compress-cache verify runs/teacher.zarr
    """
    try:
        problems = verify_store(store)
    except CacheError as e:
        raise click.ClickException(str(e)) from None
    if problems:
        for p in problems:
            click.echo(f"{store}: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{store}: every shard matches its checksum")
