"""Load a whole cache for training: validated, in one sequential pass, into RAM, onto a device, or into a
memory-mapped file for caches larger than RAM or shared by the processes of a node.

Training indexes the returned tensor per step; it never reads random rows from Zarr (20-100 ms per batch from
disk against ~0.04 ms from RAM). Every shard is checked on the way in: its sha256 against the recorded
checksum, every value finite, every row of unit norm within the stored dtype's rounding.
"""
from __future__ import annotations

import hashlib
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import torch

from cache.errors import CacheError
from cache.layout import CROPS, EMBEDDINGS, checksum, shard_range
from cache.store import array, attributes, open_store, spec_of

# |norm - 1| allowed per row: fp16 rounds each element to 2^-11 relative, so a unit vector's norm moves by
# less than ~5e-4; fp32 by ~1e-7.
NORM_TOLERANCE = {"float16": 2e-3, "float32": 1e-4}


def open_complete(path: str | Path, expect_fingerprint: str | None = None):
    """(zarr group, attributes) of a complete cache built from `expect_fingerprint`'s data, or CacheError."""
    group = open_store(path)
    attrs = attributes(group)
    if not attrs.get("complete"):
        raise CacheError(f"teacher cache {path} is incomplete (extraction was interrupted or is running); "
                         f"re-run the same `compress-cache extract` command to finish it")
    if expect_fingerprint is not None and attrs["data_fingerprint"] != expect_fingerprint:
        raise CacheError(f"teacher cache {path} was extracted from data with fingerprint "
                         f"{attrs['data_fingerprint'][:12]}, but this data has {expect_fingerprint[:12]}; "
                         f"re-run `compress-cache extract` on this data")
    return group, attrs


def _check_shard(path, k: int, lo: int, hi: int, block: np.ndarray, expected: str, dtype: str | None) -> None:
    if checksum(block) != expected:
        raise CacheError(f"teacher cache {path}: shard {k} (rows {lo}..{hi - 1}) is corrupt (checksum "
                         f"mismatch); run `compress-cache verify {path}` and re-extract with --overwrite")
    if dtype is None:
        return
    x = block.astype(np.float32)
    if not np.isfinite(x).all():
        raise CacheError(f"teacher cache {path}: shard {k} (rows {lo}..{hi - 1}) holds non-finite values; "
                         f"the teacher produced NaN/inf: check its weights and re-extract with --overwrite")
    err = np.abs(np.linalg.norm(x, axis=-1) - 1)
    if err.size and err.max() > NORM_TOLERANCE[dtype]:
        row = lo + int(np.unravel_index(err.argmax(), err.shape)[0])
        raise CacheError(f"teacher cache {path}: row {row} is not unit-norm (|norm - 1| = {err.max():.2e} > "
                         f"{NORM_TOLERANCE[dtype]:.0e}); the cache was not written by extract or is damaged")


def _mmap_target(path: Path, name: str, checksums: list[str]) -> Path:
    """A flat .npy beside the store (`STORE.zarr.mmap/`), keyed by the shard checksums: rebuilt only when the
    cache changes. It lives outside the store so that the DVC artifact stays untouched."""
    key = hashlib.sha256("".join(checksums).encode()).hexdigest()[:16]
    folder = Path(str(path).rstrip("/") + ".mmap")
    return folder / f"{name}-{key}.npy"


def _open_mapped(target: Path, shape: tuple, dtype) -> np.ndarray | None:
    """The finished flat copy, mapped read-only (pages are shared through the page cache by every process that
    maps it), or None when there is none or it does not hold this shape and dtype (then it is rebuilt)."""
    try:
        values = np.load(target, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return values if values.shape == tuple(shape) and values.dtype == dtype else None


def _load_array(path, group, attrs, name: str, check_norm: bool, mmap: bool,
                device: torch.device | None = None, build: bool = True) -> np.ndarray | torch.Tensor:
    """The whole array, shard by shard, each checked before it is kept. On a CUDA `device` each verified
    shard is copied straight into a device tensor, so host memory never holds more than one shard. With `mmap`
    and not `build`, only an existing flat copy is opened (another process of the node builds it)."""
    spec = spec_of(attrs)
    arr = array(group, name)
    checksums = attrs["checksums"][name]
    if len(checksums) != spec.num_shards:
        raise CacheError(f"teacher cache {path}: {len(checksums)} {name} checksums for {spec.num_shards} shards; "
                         f"re-extract with --overwrite")
    if mmap:
        target = _mmap_target(Path(path), name, checksums)
        mapped = _open_mapped(target, arr.shape, arr.dtype)
        if mapped is not None:
            return mapped
        if not build:
            raise CacheError(f"teacher cache {path}: its memory-mapped copy {target} is missing or incomplete "
                             f"although this node's first process built it; check that {target.parent} is "
                             f"writable and has room for {arr.nbytes / 2**30:.1f} GiB, then re-run")
        target.parent.mkdir(parents=True, exist_ok=True)
        # a temporary of its own per process and host (two nodes may share the folder), renamed when complete
        tmp = target.with_name(f"{target.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=arr.shape)
    elif device is not None and device.type != "cpu":
        out = torch.empty(arr.shape, dtype=getattr(torch, str(arr.dtype)), device=device)
    else:
        out = np.empty(arr.shape, dtype=arr.dtype)
    for k in range(spec.num_shards):  # sequential whole-shard reads: one pass over the files
        lo, hi = shard_range(k, spec.shard_rows, spec.n)
        try:
            block = arr[lo:hi]
        except Exception as e:
            raise CacheError(f"teacher cache {path}: shard {k} (rows {lo}..{hi - 1}) cannot be read "
                             f"({type(e).__name__}); run `compress-cache verify {path}` and re-extract")
        _check_shard(path, k, lo, hi, block, checksums[k], spec.dtype if check_norm else None)
        out[lo:hi] = torch.from_numpy(block).to(out.device) if isinstance(out, torch.Tensor) else block
    if mmap:
        out.flush()
        del out
        tmp.replace(target)
        return np.load(target, mmap_mode="r")
    return out


def embeddings_bytes(attrs: dict) -> int:
    """Bytes of a cache's embeddings array, from its attributes (without reading it)."""
    spec = spec_of(attrs)
    return spec.n * spec.row_bytes


def load_embeddings(path: str | Path, expect_fingerprint: str | None = None, device: str | torch.device = "cpu",
                    mmap: bool = False, build: bool = True) -> tuple[torch.Tensor, dict]:
    """(embeddings (N, D) or (N, V, D) in the stored dtype on `device`, the cache's attributes).

    `mmap=True` keeps the tensor in a read-only memory-mapped flat copy (CPU only) instead of anonymous RAM: for
    caches larger than host memory, and for the processes of one node, which then share one copy in the page
    cache. The copy is built (every shard verified) when missing, unless `build=False`, which only opens it.
    The tensor must not be written to. Raises CacheError naming the problem (missing, incomplete, other data,
    corrupt).
    """
    device = torch.device(device)
    if mmap and device.type != "cpu":
        raise CacheError(f"mmap=True keeps the cache on disk-backed CPU memory; it cannot go to {device}")
    group, attrs = open_complete(path, expect_fingerprint)
    values = _load_array(path, group, attrs, EMBEDDINGS, check_norm=True, mmap=mmap, device=device, build=build)
    if isinstance(values, torch.Tensor):
        return values, attrs
    with warnings.catch_warnings():  # torch warns that a read-only map is not writable: nothing writes to it
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(values), attrs


def load_crops(path: str | Path) -> torch.Tensor | None:
    """The (N, V, 5) float32 crop parameters of a multi-view cache (view 0 is the centre crop), or None."""
    group, attrs = open_complete(path)
    if attrs["views"] == 1:
        return None
    return torch.from_numpy(_load_array(path, group, attrs, CROPS, check_norm=False, mmap=False))
