"""Write a cache shard by shard, so that a kill at any moment loses at most the shards in flight.

Protocol, per shard k (any rank, any order, never two writers on one shard):
  1. write rows [k*S, (k+1)*S) of every array in one whole-shard write (Zarr writes a `.partial` temp file and
     renames it, so a shard file is never half-written);
  2. read it back and compare its sha256 with the one computed from memory (the write is verified);
  3. write `progress/shard-<k>.json` with those checksums (temp name + rename).
A shard with a valid marker is done; everything else is redone. `finalize` (one process, after every rank has
finished) collects the markers into the `checksums` attribute and only then sets `complete = true`.

A store marked complete is re-checked before it is reused (`damaged_shards`); one with damaged shards is turned
back into an incomplete one whose good shards keep their markers (`reopen`), so only the damaged ones are redone.
A failed write (no space, read-only) is one CacheError naming the path and the cause; Zarr's own temporary is
removed by Zarr, ours by `clean_debris` on the next run.
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
        try:
            return self._write_shard(k, embeddings, crops)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise CacheError(f"cannot write shard {k} of {self.path}{where}: "
                             f"{os.strerror(e.errno) if e.errno else e}; free some space or make it writable, "
                             f"then re-run the same command (verified shards are kept)") from None

    def _write_marker(self, k: int, checksums: dict) -> None:
        lo, hi = self.rows(k)
        self.progress.mkdir(exist_ok=True)
        tmp = self._marker(k).with_name(f"{self._marker(k).name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"shard": k, "rows": [lo, hi], "checksums": checksums}))
        os.replace(tmp, self._marker(k))

    def _write_shard(self, k: int, embeddings: np.ndarray, crops: np.ndarray | None) -> dict:
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
        self._write_marker(k, written)
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
        try:
            self.group.attrs.update({"checksums": checksums, "complete": True, "completed": now()})
        except OSError as e:  # Zarr rewrites zarr.json through a temporary: the old one is intact
            raise CacheError(f"cannot mark {self.path} complete: {os.strerror(e.errno) if e.errno else e}; free "
                             f"some space and re-run the same command (every shard is kept)") from None
        self.clear_progress()
        return attributes(self.group)

    def clear_progress(self) -> None:
        """Remove the markers of a complete store (also those left by a kill between completion and removal)."""
        shutil.rmtree(self.progress, ignore_errors=True)

    def damaged_shards(self) -> list[int]:
        """The shards of a complete store whose stored values no longer match its recorded checksums."""
        sums = attributes(self.group).get("checksums") or {}
        bad = []
        for k in range(self.spec.num_shards):
            try:
                ok = self._read_checksums(k) == {name: sums[name][k] for name in self._names()}
            except Exception:  # a missing or undecodable shard file, or missing checksums
                ok = False
            if not ok:
                bad.append(k)
        return bad

    def reopen(self, damaged: list[int]) -> None:
        """Make a complete store with damaged shards incomplete again: markers for the sound shards first (from
        the recorded checksums), then `complete = false`, so the next pass redoes only the damaged ones."""
        sums = attributes(self.group).get("checksums") or {}
        for k in sorted(set(range(self.spec.num_shards)) - set(damaged)):
            self._write_marker(k, {name: sums[name][k] for name in self._names()})
        self.group.attrs.update({"complete": False, "checksums": None, "completed": None})

    def _names(self) -> list[str]:
        return ["embeddings"] + (["crops"] if self.crops is not None else [])
