"""Write a cache shard by shard, so that a kill at any moment loses at most the shards in flight.

Protocol, per shard k (any rank, any order, never two writers on one shard):
  1. write rows [k*S, (k+1)*S) of every array in one whole-shard write (Zarr writes a `.partial` temp file and
     renames it, so a shard file is never half-written);
  2. read it back and compare its sha256 with the one computed from memory (the write is verified);
  3. write `progress/shard-<k>.json` with those checksums (temp name + rename).
A shard with a valid marker is done; everything else is redone. `finalize` (one process, after every rank has
finished) collects the markers into the `checksums` attribute and only then sets `complete = true`.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cache.errors import CacheError
from cache.layout import CROPS, PROGRESS, checksum, shard_range
from cache.store import array, attributes, now, open_store, spec_of


class CacheWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.group = open_store(self.path, mode="r+")
        self.spec = spec_of(attributes(self.group))
        self.embeddings = array(self.group)
        self.crops = array(self.group, CROPS) if self.spec.views > 1 else None
        self.progress = self.path / PROGRESS

    def rows(self, k: int) -> tuple[int, int]:
        return shard_range(k, self.spec.shard_rows, self.spec.n)

    def _marker(self, k: int) -> Path:
        return self.progress / f"shard-{k:06d}.json"

    def clean_debris(self) -> list[Path]:
        """Remove temp files a killed writer left behind (Zarr's `*.partial`, our `*.tmp`); return them."""
        debris = [p for p in self.path.rglob("*") if p.is_file() and p.suffix in (".partial", ".tmp")]
        for p in debris:
            p.unlink(missing_ok=True)
        return debris

    def _read_checksums(self, k: int) -> dict:
        lo, hi = self.rows(k)
        out = {"embeddings": checksum(self.embeddings[lo:hi])}
        if self.crops is not None:
            out["crops"] = checksum(self.crops[lo:hi])
        return out

    def is_done(self, k: int) -> bool:
        """True when shard k has a marker and its stored values still match the marker's checksums."""
        try:
            marker = json.loads(self._marker(k).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        try:
            return marker["checksums"] == self._read_checksums(k)
        except Exception:  # a shard file that no longer decodes: redo it
            return False

    def pending(self, shards: Iterable[int]) -> list[int]:
        return [k for k in shards if not self.is_done(k)]

    def write_shard(self, k: int, embeddings: np.ndarray, crops: np.ndarray | None = None) -> dict:
        """Write, read back, verify, then mark shard k done. Returns its checksums."""
        lo, hi = self.rows(k)
        want = (hi - lo,) + self.spec.shape[1:]
        embeddings = np.ascontiguousarray(embeddings, dtype=self.spec.dtype)
        if embeddings.shape != want:
            raise CacheError(f"shard {k} of {self.path}: embeddings of shape {embeddings.shape}, expected {want}")
        if (crops is None) != (self.crops is None):
            raise CacheError(f"shard {k} of {self.path}: crops are required exactly when views > 1")
        written = {"embeddings": checksum(embeddings)}
        self.embeddings[lo:hi] = embeddings
        if crops is not None:
            crops = np.ascontiguousarray(crops, dtype=np.float32)
            written["crops"] = checksum(crops)
            self.crops[lo:hi] = crops
        stored = self._read_checksums(k)
        if stored != written:
            raise CacheError(f"shard {k} of {self.path} (rows {lo}..{hi - 1}) reads back different from what "
                             f"was written; check the disk and re-run the same command")
        self.progress.mkdir(exist_ok=True)
        tmp = self._marker(k).with_suffix(".tmp")
        tmp.write_text(json.dumps({"shard": k, "rows": [lo, hi], "checksums": written}))
        os.replace(tmp, self._marker(k))
        return written

    def finalize(self) -> dict:
        """Mark the store complete once every shard has a marker; return the final attributes."""
        checksums: dict[str, list[str]] = {"embeddings": []}
        if self.crops is not None:
            checksums["crops"] = []
        missing = []
        for k in range(self.spec.num_shards):
            try:
                marker = json.loads(self._marker(k).read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                missing.append(k)
                continue
            for name in checksums:
                checksums[name].append(marker["checksums"][name])
        if missing:
            raise CacheError(f"{self.path}: {len(missing)} of {self.spec.num_shards} shards are not written "
                             f"(first: {missing[:5]}); re-run the same extract command to finish them")
        self.group.attrs.update({"checksums": checksums, "complete": True, "completed": now()})
        shutil.rmtree(self.progress, ignore_errors=True)
        return attributes(self.group)

    def shards_done(self) -> int:
        return sum(1 for _ in self.progress.glob("shard-*.json")) if self.progress.exists() else 0
