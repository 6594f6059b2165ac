"""The packed image store: one HDF5 file of pre-resized uint8 images plus a small JSON manifest.

Layout of a store folder:

    images.h5       images (N, H, W, C) uint8, labels (N,) int64, split (N,) uint8 (0 train, 1 val),
                    ids (N,) utf-8 strings: row i is item i, forever
    manifest.json   dataset, counts, shape, classes, source, skipped items, provenance and the fingerprint

The fingerprint is the sha256 of the ordered ids, pixels, labels and split. Every later artifact (teacher
cache, checkpoints, features) records it, and every consumer refuses a store whose fingerprint differs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import CompressError
from pipeline.provenance import provenance

FORMAT = "compress-cache/image-store"
VERSION = 1
SPLITS = {"train": 0, "val": 1}
_HASH_ROWS = 4096  # rows hashed per block: bounded memory at ImageNet size


def fingerprint(ids, images, labels, split) -> str:
    """sha256 over the ordered ids, then pixels, labels and split; `images` may be an h5py dataset."""
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    for start in range(0, len(labels), _HASH_ROWS):
        h.update(np.ascontiguousarray(images[start:start + _HASH_ROWS]).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(np.asarray(split, dtype=np.uint8).tobytes())
    return h.hexdigest()


def write_image_store(out: str | Path, images: np.ndarray, labels, split, ids, *, dataset: str,
                      classes: list[str], source: str, arguments: dict | None = None,
                      skipped: list[dict] | None = None) -> dict:
    """Write a store atomically (temporary names, then rename; the manifest last) and return its manifest."""
    out = Path(out)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise CompressError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    split = np.asarray(split, dtype=np.uint8)
    ids = [str(i) for i in ids]
    n = len(images)
    if not (len(labels) == len(split) == len(ids) == n):
        raise CompressError(f"store columns differ in length: images {n}, labels {len(labels)}, "
                            f"split {len(split)}, ids {len(ids)}")
    if len(set(ids)) != n:
        raise CompressError(f"{dataset}: item ids are not unique; the row order could not be fingerprinted")
    out.mkdir(parents=True, exist_ok=True)
    tmp_h5, tmp_manifest = out / "images.h5.tmp", out / "manifest.json.tmp"
    rows = max(1, min(n, (1 << 20) // max(1, images[0].nbytes)))  # ~1 MiB chunks: contiguous block reads
    with h5py.File(tmp_h5, "w") as f:
        f.create_dataset("images", data=images, chunks=(rows,) + images.shape[1:])
        f.create_dataset("labels", data=labels)
        f.create_dataset("split", data=split)
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    manifest = {
        "format": FORMAT, "version": VERSION, "dataset": dataset, "n": n,
        "shape": list(images.shape[1:]), "num_classes": len(classes), "classes": list(classes),
        "splits": {name: int((split == code).sum()) for name, code in SPLITS.items()},
        "source": source, "skipped": skipped or [],
        "fingerprint": fingerprint(ids, images, labels, split),
        "provenance": provenance(arguments),
    }
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp_h5, out / "images.h5")
    os.replace(tmp_manifest, out / "manifest.json")
    return manifest


class ImageStore:
    """Read side of a store. Opening checks the manifest; `verify()` re-hashes everything."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not self.root.is_dir():
            raise CompressError(f"data folder {str(self.root)!r} does not exist; "
                                f"create it with `compress-cache prepare --dataset digits --out {self.root}`")
        if not manifest_path.is_file() or not (self.root / "images.h5").is_file():
            raise CompressError(f"{str(self.root)!r} is not an image store (no manifest.json/images.h5); "
                                f"create it with `compress-cache prepare`")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise CompressError(f"{manifest_path}: corrupt manifest ({e}); re-run `compress-cache prepare`")
        if self.manifest.get("format") != FORMAT:
            raise CompressError(f"{manifest_path}: not an image-store manifest "
                                f"(format {self.manifest.get('format')!r})")
        try:
            with h5py.File(self.root / "images.h5", "r") as f:
                self.labels = f["labels"][:]
                self.split = f["split"][:]
                self.shape = tuple(f["images"].shape)
        except (OSError, KeyError) as e:
            raise CompressError(f"{self.root / 'images.h5'}: unreadable image store ({e}); "
                                f"re-run `compress-cache prepare`")
        if self.shape[0] != self.manifest["n"]:
            raise CompressError(f"{self.root}: manifest says {self.manifest['n']} images, file holds "
                                f"{self.shape[0]}; re-run `compress-cache prepare`")

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def n(self) -> int:
        return self.manifest["n"]

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise CompressError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == SPLITS[split])

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """A contiguous block of rows [start, stop) as uint8 (n, H, W, C)."""
        with h5py.File(self.root / "images.h5", "r") as f:
            return f["images"][start:stop]

    def ids(self) -> list[str]:
        with h5py.File(self.root / "images.h5", "r") as f:
            return [s.decode() if isinstance(s, bytes) else s for s in f["ids"][:]]

    def verify(self) -> None:
        """Re-hash the whole store against its manifest; raise on any difference."""
        with h5py.File(self.root / "images.h5", "r") as f:
            actual = fingerprint(self.ids(), f["images"], self.labels, self.split)
        if actual != self.fingerprint:
            raise CompressError(f"{self.root}: contents do not match the manifest fingerprint "
                                f"({actual[:12]} != {self.fingerprint[:12]}); re-run `compress-cache prepare`")

    def check_fingerprint(self, expected: str, what: str) -> None:
        """Refuse an artifact that was made from other data."""
        if expected != self.fingerprint:
            raise CompressError(f"{what} was built from other data (fingerprint {expected[:12]}), "
                                f"but {self.root} has {self.fingerprint[:12]}; rebuild it from this data")
