"""`compress-cache verify`: re-read a teacher cache or an image store against its recorded checksums."""
from pathlib import Path

import click


@click.command("verify")
@click.argument("store", type=click.Path(path_type=Path))
def command(store):
    """Re-check every shard of a cache or every block of an image store; exit 1 naming each bad one.

    An image store (from `prepare`) is also re-hashed whole against its fingerprint.

    \b
    Examples:
      compress-cache verify runs/teacher.zarr
      compress-cache verify data/digits
    """
    if (store / "manifest.json").is_file():
        from pipeline.data.imagestore import ImageStore
        problems, what = ImageStore(store).problems(), "every block matches its checksum and the fingerprint"
    else:
        from cache.verify import verify_store
        problems, what = verify_store(store), "every shard matches its checksum"
    # errors (missing, not a store, unreadable metadata) become one line in the command group
    if problems:
        for p in problems:
            click.echo(f"{store}: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{store}: {what}")
