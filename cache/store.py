"""Create and open a cache store: the Zarr group, its arrays and its attributes (see cache/layout.py)."""
from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import zarr

from cache.errors import CacheError
from cache.layout import CROPS, EMBEDDINGS, FORMAT, VERSION, CacheSpec, differences, is_cache


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def create(path: str | Path, spec: CacheSpec, provenance: dict | None = None) -> zarr.Group:
    """A new, empty, incomplete store. The caller holds the lock and has removed any previous store. A failure
    half-way (no space, no permission) removes what was made: a half-created store would block every later run."""
    path = Path(path)
    try:
        return _create(path, spec, provenance)
    except OSError as e:
        shutil.rmtree(path, ignore_errors=True)
        raise CacheError(f"cannot create teacher cache {path}: {os.strerror(e.errno) if e.errno else e}; "
                         f"free some space or choose a writable --out, then re-run the same command") from None


def _create(path: Path, spec: CacheSpec, provenance: dict | None) -> zarr.Group:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    common = dict(compressors=None, filters=None, fill_value=0)
    group.create_array(EMBEDDINGS, shape=spec.shape, dtype=spec.dtype,
                       chunks=(spec.chunk_rows,) + spec.shape[1:], shards=(spec.shard_rows,) + spec.shape[1:],
                       **common)
    if spec.views > 1:
        group.create_array(CROPS, shape=(spec.n, spec.views, 5), dtype="float32",
                           chunks=(spec.chunk_rows, spec.views, 5), shards=(spec.shard_rows, spec.views, 5),
                           **common)
    group.attrs.update({"format": FORMAT, "version": VERSION, **spec.identity(),
                        "num_shards": spec.num_shards, "complete": False, "checksums": None,
                        "created": now(), "completed": None, "provenance": provenance or {}})
    return group


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open an existing cache, refusing anything that is not one with a message that says what it is."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"teacher cache {str(path)!r} does not exist; create it with `compress-cache extract`")
    if not is_cache(path):
        raise CacheError(f"{str(path)!r} is not a compress-cache teacher cache (no zarr.json with format "
                         f"{FORMAT!r}); point at a store written by `compress-cache extract`")
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        version = group.attrs.get("version")
    except Exception as e:  # corrupt metadata JSON and the like
        raise CacheError(f"{path}: unreadable cache metadata ({type(e).__name__}: {e}); re-run extract "
                         f"with --overwrite")
    if version != VERSION:
        raise CacheError(f"{path}: cache format version {version} is not supported (this code reads "
                         f"{VERSION}); re-run extract with --overwrite")
    return group


def attributes(group: zarr.Group) -> dict:
    return dict(group.attrs.asdict())


def array(group: zarr.Group, name: str = EMBEDDINGS):
    try:
        return group[name]
    except KeyError:
        raise CacheError(f"{_where(group)}: the cache has no {name!r} array; re-run extract with --overwrite")
    except Exception as e:  # damaged array metadata (zarr.json): a JSON or validation error from zarr
        first = (str(e).splitlines() or [""])[0][:120]
        raise CacheError(f"{_where(group)}: the {name!r} array's metadata ({name}/zarr.json) is unreadable "
                         f"({type(e).__name__}: {first}); re-run extract with --overwrite") from None


def _where(group: zarr.Group) -> str:
    return str(getattr(group.store, "root", group.store))


def spec_of(attrs: dict) -> CacheSpec:
    try:
        return CacheSpec(**{k: attrs[k] for k in CacheSpec.__dataclass_fields__})
    except (KeyError, TypeError) as e:
        raise CacheError(f"the cache's attributes are incomplete or damaged ({type(e).__name__}: {e}); "
                         f"re-run extract with --overwrite") from None


def open_or_create(path: str | Path, spec: CacheSpec, overwrite: bool = False,
                   provenance: dict | None = None, rebuild_if_changed: bool = False) -> zarr.Group:
    """The store for `spec`: the existing one when its identity matches (to resume or reuse), a new one when
    there is none or `overwrite` is set. A different identity is refused, naming every difference, or with
    `rebuild_if_changed` replaced: a cache is never a mix of two requests. The caller must hold the store's lock."""
    path = Path(path)
    if path.exists() and not is_cache(path):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            raise CacheError(f"{str(path)!r} exists and is not a teacher cache; choose another --out or "
                             f"remove it yourself (--overwrite only replaces caches)")
    if path.exists() and overwrite:
        shutil.rmtree(path)
    if not path.exists():
        return create(path, spec, provenance)
    group = open_store(path, mode="r+")
    stored = {k: attributes(group).get(k) for k in spec.identity()}
    diff = differences(stored, spec.identity())
    if diff and rebuild_if_changed:
        shutil.rmtree(path)
        return create(path, spec, provenance)
    if diff:
        raise CacheError(f"{path} was built for another request ({'; '.join(diff)}; stored != requested); "
                         f"use --overwrite to rebuild it, or another --out")
    return group


def size_on_disk(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
