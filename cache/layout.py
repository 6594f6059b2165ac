"""What a teacher cache is on disk, and the request (`CacheSpec`) that fixes its identity.

A cache is one Zarr v3 group (a folder, one DVC artifact):

    STORE.zarr/
      zarr.json                 group metadata; its attributes describe the whole cache (see `attributes`)
      embeddings/               (N, D) or (N, V, D) float16|float32, sharded along rows, no compressor
        zarr.json
        c/<k>/0[/0]             shard k: rows [k*S, (k+1)*S), the unit of writing and of checksumming
      crops/                    (N, V, 5) float32 crop parameters (cy, cx, h, w, flip), only when V > 1
      progress/shard-<k>.json   written while extracting: shard k is written and verified (removed when complete)

Row i is item i of the image store whose fingerprint is `data_fingerprint`. A shard is the unit of writing
because a partial-shard write is a read-modify-write: two writers touching one shard would silently lose rows.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cache.errors import CacheError

FORMAT = "compress-cache/teacher-cache"
VERSION = 1
DTYPES = ("float16", "float32")
EMBEDDINGS, CROPS, PROGRESS = "embeddings", "crops", "progress"
_SHARD_BYTES = 32 << 20  # ~32 MiB shards: few files at ImageNet size, bounded memory per write


def auto_shard_rows(row_bytes: int) -> int:
    """A power of two of rows near 32 MiB per shard (256..65536). Never depends on the number of processes,
    so the layout, and therefore the bytes, are the same whoever writes them."""
    rows = 256
    while rows * 2 * row_bytes <= _SHARD_BYTES and rows < 65536:
        rows *= 2
    return rows


@dataclass(frozen=True)
class CacheSpec:
    """Everything that determines the bytes of a cache. Two requests with equal specs give identical stores."""
    n: int
    dim: int
    data_fingerprint: str
    teacher: dict
    dtype: str = "float16"
    views: int = 1
    shard_rows: int = 0  # 0: auto_shard_rows
    chunk_rows: int = 0  # 0: min(1024, shard_rows) when it divides shard_rows, else shard_rows
    view_params: dict = field(default_factory=dict)  # seed, scale, ratio, flip of views 1..V-1
    amp: str = "none"  # the teacher's forward under autocast: none, bf16 or fp16 (rows differ slightly)
    code: str = ""  # digest of the code that computes the rows (pipeline/runtime/code_digest.py), set by `extract`

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise CacheError(f"dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        if self.n < 1 or self.dim < 1 or self.views < 1:
            raise CacheError(f"a cache needs n, dim and views >= 1, got n={self.n} dim={self.dim} "
                             f"views={self.views}")
        shard = self.shard_rows or min(self.n, auto_shard_rows(self.row_bytes))
        chunk = self.chunk_rows or (min(1024, shard) if shard % min(1024, shard) == 0 else shard)
        if shard < 1 or chunk < 1 or shard % chunk:
            raise CacheError(f"shard rows {shard} must be a positive multiple of chunk rows {chunk}")
        object.__setattr__(self, "shard_rows", shard)
        object.__setattr__(self, "chunk_rows", chunk)

    @property
    def row_bytes(self) -> int:
        return self.views * self.dim * np.dtype(self.dtype).itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, self.dim) if self.views == 1 else (self.n, self.views, self.dim)

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.shard_rows)

    def identity(self) -> dict:
        """The attributes a later request must match to resume or reuse this store."""
        return asdict(self)


def shard_range(k: int, shard_rows: int, n: int) -> tuple[int, int]:
    return k * shard_rows, min((k + 1) * shard_rows, n)


def rank_shards(num_shards: int, rank: int, world_size: int) -> range:
    """The contiguous block of whole shards rank `rank` of `world_size` owns (balanced, never padded)."""
    return range(num_shards * rank // world_size, num_shards * (rank + 1) // world_size)


def checksum(array: np.ndarray) -> str:
    """sha256 of the values in C order: independent of codecs and of how the shard file is laid out."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def differences(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    """'key: stored != wanted' for every leaf that differs, e.g. 'teacher.weights_sha256: 3fa2.. != 91bc..'."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{key}: {_short(a)} != {_short(b)}")
    return out


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _short(v) -> str:
    return (v[:12] + "..") if isinstance(v, str) and len(v) > 20 else repr(_plain(v))


def is_cache(path: Path) -> bool:
    """A folder whose zarr.json names the cache format (read as bytes: a damaged file is just not a cache)."""
    meta = Path(path) / "zarr.json"
    try:
        return meta.is_file() and FORMAT.encode() in meta.read_bytes()
    except OSError:
        return False
