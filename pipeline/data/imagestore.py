"""The packed image store: one HDF5 file of pre-resized uint8 images plus a small JSON manifest.

Layout of a store folder:

    images.h5       images (N, H, W, C) uint8, labels (N,) int64, split (N,) uint8 (0 train, 1 val),
                    ids (N,) utf-8 strings: row i is item i, forever; a letterboxed store also has
                    regions (N, 4) int32, each row's valid region (y0, x0, h, w) in pixels
    manifest.json   dataset, counts, shape, classes, source, skipped items, provenance and the fingerprint

The fingerprint is the sha256 of the ordered ids, pixels, labels and split (then the regions, when the store
has them). Every later artifact (teacher
cache, checkpoints, features) records it, and every consumer refuses a store whose fingerprint differs.

Checked as it is read, at no extra pass: `prepare` also records the sha256 of every block of `block_rows`
consecutive rows (the HDF5 chunk, ~1 MiB) in images.h5 (`block_sha256`), and the manifest's `integrity`
entry binds the fingerprint to those block checksums and to the labels, split, ids (and regions). Opening a store checks
that binding and the labels and split (small); every read checks the blocks it touches. A store written
before this existed is re-hashed once when opened.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import h5py
import numpy as np

from cache.lock import StoreLock
from pipeline.runtime.atomic import io_error, make_dir, remove_temporaries, temp_name, write_text
from pipeline.runtime.errors import CompressError
from pipeline.runtime.provenance import provenance
from pipeline.data.reserved import ReservedFile
from pipeline.data.storereader import ALIGN, StoreReader

FORMAT = "compress-cache/image-store"
VERSION = 1
SPLITS = {"train": 0, "val": 1}
_HASH_ROWS = 4096  # rows hashed per block: bounded memory at ImageNet size


def fingerprint(ids, images, labels, split, regions=None) -> str:
    """sha256 over the ordered ids, then pixels, labels and split (and the valid regions of a letterboxed store,
    when it has them); `images` may be an h5py dataset."""
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    for start in range(0, len(labels), _HASH_ROWS):
        h.update(np.ascontiguousarray(images[start:start + _HASH_ROWS]).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(np.asarray(split, dtype=np.uint8).tobytes())
    if regions is not None:
        h.update(_region_bytes(regions))
    return h.hexdigest()


def _region_bytes(regions) -> bytes:
    return np.ascontiguousarray(regions, dtype="<i4").tobytes()


def block_rows_for(row_bytes: int, n: int) -> int:
    """Rows per HDF5 chunk and per checksummed block: ~1 MiB, so a block is one contiguous read."""
    return max(1, min(n, (1 << 20) // max(1, row_bytes)))


def block_digests(images, rows: int) -> np.ndarray:
    """(blocks, 32) uint8: the sha256 of each block of `rows` consecutive images."""
    n = len(images)
    out = np.empty((-(-n // rows), 32), dtype=np.uint8)
    for b in range(len(out)):
        out[b] = np.frombuffer(hashlib.sha256(np.ascontiguousarray(images[b * rows:(b + 1) * rows])).digest(),
                               dtype=np.uint8)
    return out


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _ids_sha(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _seal(fingerprint_: str, integrity: dict) -> str:
    """Binds the manifest's fingerprint to the checksums it was computed with: editing one alone shows."""
    fields = {k: v for k, v in integrity.items() if k != "seal"}
    return hashlib.sha256(json.dumps({"fingerprint": fingerprint_, **fields}, sort_keys=True).encode()).hexdigest()


def _size_bound(images, ids: list[str], blocks: int) -> int:
    """Generous upper bound of the HDF5 file's size: the reservation made before writing it (regions included)."""
    n = len(images)
    return (int(n * int(np.prod(images.shape[1:])) * 1.01) + 9 * n + 17 * n
            + sum(len(i.encode()) + 64 for i in ids) + (32 + ALIGN) * blocks + (64 << 10))  # + alignment


def _write_h5(tmp: Path, images, labels, split, ids, rows: int, regions=None) -> tuple[np.ndarray, str]:
    """The whole images.h5 at the temporary `tmp`, written group of blocks by group of blocks (memory bounded
    by the group, whatever N); the block checksums and the fingerprint are computed from the same reads.
    `regions` (N, 4) (y0, x0, h, w), a letterboxed store's valid regions, are written with the same groups.
    Returns (block digests, fingerprint); on any failure, one CompressError and no file left."""
    n = len(images)
    digests = np.empty((-(-n // rows), 32), dtype=np.uint8)
    fp = hashlib.sha256("\n".join(ids).encode())  # the same bytes, in the same order, as fingerprint()
    group = rows * max(1, (64 << 20) // max(1, rows * int(np.prod(images.shape[1:]))))  # ~64 MiB per read
    try:
        with open(tmp, "xb+") as raw:
            f = ReservedFile(raw, _size_bound(images, ids, len(digests)))
            # blocks start on 4 KiB boundaries, so uncached (O_DIRECT) reads land straight in the loader's pages
            with h5py.File(f, "w", alignment_threshold=1 << 16, alignment_interval=ALIGN) as h5:
                d = h5.create_dataset("images", shape=images.shape, dtype=np.uint8,
                                      chunks=(rows,) + tuple(images.shape[1:]))
                g = None if regions is None else h5.create_dataset("regions", shape=(n, 4), dtype="<i4",
                                                                    chunks=(min(n, 1 << 16), 4))
                for lo in range(0, n, group):
                    x = np.ascontiguousarray(images[lo:lo + group])
                    d[lo:lo + len(x)] = x
                    if g is not None:
                        g[lo:lo + len(x)] = np.asarray(regions[lo:lo + len(x)], dtype="<i4")
                    fp.update(x.tobytes())
                    for b in range(0, len(x), rows):
                        digests[(lo + b) // rows] = np.frombuffer(hashlib.sha256(x[b:b + rows]).digest(), np.uint8)
                h5.create_dataset("labels", data=labels)
                h5.create_dataset("split", data=split)
                h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
                h5.create_dataset("block_sha256", data=digests)
            f.finish()
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise io_error(tmp.parent / "images.h5", e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fp.update(np.asarray(labels, dtype=np.int64).tobytes())
    fp.update(np.asarray(split, dtype=np.uint8).tobytes())
    for lo in range(0, n if regions is not None else 0, group):
        fp.update(_region_bytes(regions[lo:lo + group]))
    return digests, fp.hexdigest()


def write_image_store(out: str | Path, images, labels, split, ids, *, dataset: str,
                      classes: list[str], source: str, arguments: dict | None = None,
                      skipped: list[dict] | None = None, locked: bool = False, regions=None,
                      fit: str | None = None) -> dict:
    """Write a store atomically (temporary names, then rename; the manifest last) and return its manifest.

    `images` is a uint8 (N, H, W, C) array or anything with `shape`, `dtype`, `len` and row slicing (prepare's
    spool file), read ~64 MiB at a time. `locked`: the caller already holds the store folder's lock.
    `regions` (N, 4) int (y0, x0, h, w): each row's valid region in pixels (`prepare --fit letterbox`), stored
    as the `regions` dataset and covered by the fingerprint; left out when every row is the whole image, so such
    a store is byte for byte a store without regions. `fit` ("letterbox", "centre", None: not resized) is
    recorded in the manifest."""
    out = Path(out)
    images = images if hasattr(images, "shape") and hasattr(images, "dtype") else np.asarray(images)
    if images.dtype != np.uint8 or len(images.shape) != 4:
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
    regions = _checked_regions(regions, n, tuple(images.shape[1:3]))
    make_dir(out, "image store folder")
    kw = dict(dataset=dataset, classes=classes, source=source, arguments=arguments, skipped=skipped,
              regions=regions, fit=fit)
    if locked:
        return _write(out, images, labels, split, ids, **kw)
    with StoreLock(out):  # one writer per store folder; a killed writer's temporaries are removed
        remove_temporaries(out)
        return _write(out, images, labels, split, ids, **kw)


def _checked_regions(regions, n: int, hw: tuple[int, int]) -> np.ndarray | None:
    """int32 (N, 4) regions inside the image, or None when there are none or every one is the whole image."""
    if regions is None:
        return None
    r = np.asarray(regions)
    if r.shape != (n, 4) or not np.issubdtype(r.dtype, np.integer):
        raise CompressError(f"regions must be integer (N, 4) = ({n}, 4) rows of (y0, x0, h, w), got {r.dtype} "
                            f"{r.shape}")
    y0, x0, h, w = r.T
    bad = np.flatnonzero((y0 < 0) | (x0 < 0) | (h < 1) | (w < 1) | (y0 + h > hw[0]) | (x0 + w > hw[1]))
    if len(bad):
        raise CompressError(f"region {r[bad[0]].tolist()} of row {bad[0]} is not inside the {hw[0]}x{hw[1]} image "
                            f"({len(bad)} such rows)")
    if (r == np.array([0, 0, hw[0], hw[1]])).all():
        return None
    return r.astype("<i4")


def _write(out: Path, images, labels, split, ids, *, dataset, classes, source, arguments, skipped, regions,
           fit) -> dict:
    n = len(images)
    rows = block_rows_for(int(np.prod(images.shape[1:])), n)
    tmp = temp_name(out / "images.h5")
    digests, fp = _write_h5(tmp, images, labels, split, ids, rows, regions)
    integrity = {"block_rows": rows, "blocks_sha256": _sha(digests), "labels_sha256": _sha(labels),
                 "split_sha256": _sha(split), "ids_sha256": _ids_sha(ids)}
    if regions is not None:
        integrity["regions_sha256"] = hashlib.sha256(_region_bytes(regions)).hexdigest()
    integrity["seal"] = _seal(fp, integrity)
    manifest = {
        "format": FORMAT, "version": VERSION, "dataset": dataset, "n": n,
        "shape": [int(s) for s in images.shape[1:]], "num_classes": len(classes), "classes": list(classes),
        "splits": {name: int((split == code).sum()) for name, code in SPLITS.items()},
        "source": source, "skipped": skipped or [], "fit": fit,
        "fingerprint": fp, "integrity": integrity,
        "provenance": provenance(arguments),
    }
    # The manifest goes first and comes back last: between the two, the folder is not a store at all, never
    # a new images.h5 under an old manifest.
    try:
        (out / "manifest.json").unlink(missing_ok=True)
        os.replace(tmp, out / "images.h5")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise io_error(out / "images.h5", e) from None
    write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
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
                digests = f["block_sha256"][:] if "block_sha256" in f else None
        except (OSError, KeyError) as e:
            raise CompressError(f"{self.root / 'images.h5'}: unreadable image store ({e}); "
                                f"re-run `compress-cache prepare`")
        if self.shape[0] != self.manifest["n"]:
            raise CompressError(f"{self.root}: manifest says {self.manifest['n']} images, file holds "
                                f"{self.shape[0]}; re-run `compress-cache prepare`")
        self._lock = threading.Lock()  # the extract read-ahead thread and the main thread share the edge block
        self._readers = threading.local()  # one open handle per reading thread (storereader.py)
        self._edge: tuple[int, np.ndarray] | None = None  # the last block read (checked), for sequential reads
        integrity = self.manifest.get("integrity")
        if integrity is None:  # written before block checksums existed: one full pass, now
            self.block_rows, self.digests = self._rehash()
        else:
            self.block_rows, self.digests = int(integrity["block_rows"]), digests
            self._check_integrity(integrity)

    def _damaged(self, what: str) -> CompressError:
        return CompressError(f"{self.root}: {what}; the store was modified or damaged after `prepare` wrote it: "
                             f"re-run `compress-cache prepare`")

    def _check_integrity(self, integrity: dict) -> None:
        """The manifest's fingerprint, the block checksums, labels and split agree with each other (cheap)."""
        if _seal(self.fingerprint, integrity) != integrity.get("seal"):
            raise self._damaged("the manifest's fingerprint or checksums were edited (its seal does not match)")
        if self.digests is None or _sha(self.digests) != integrity["blocks_sha256"]:
            raise self._damaged("images.h5's block checksums differ from the manifest's")
        if len(self.digests) != -(-self.n // self.block_rows):
            raise self._damaged(f"{len(self.digests)} block checksums for {self.n} rows")
        if _sha(self.labels) != integrity["labels_sha256"] or _sha(self.split) != integrity["split_sha256"]:
            raise self._damaged("the labels or the train/val split differ from the manifest's checksums")

    def _rehash(self) -> tuple[int, np.ndarray]:
        """Block checksums of a store without them, after checking the whole store against its fingerprint."""
        rows = block_rows_for(int(np.prod(self.shape[1:])), self.n)
        with h5py.File(self.root / "images.h5", "r") as f:
            images = f["images"]
            if fingerprint(self.ids(), images, self.labels, self.split) != self.fingerprint:
                raise self._damaged("the contents do not match the manifest's fingerprint")
            return rows, np.concatenate([block_digests(images[lo:lo + 64 * rows], rows)
                                         for lo in range(0, self.n, 64 * rows)])

    def _check_block(self, k: int, block: np.ndarray) -> None:
        if hashlib.sha256(np.ascontiguousarray(block)).digest() != self.digests[k].tobytes():
            lo = k * self.block_rows
            raise self._damaged(f"images.h5 rows {lo}..{lo + len(block) - 1} (block {k}) do not match the "
                                f"checksum recorded by prepare (`compress-cache verify {self.root}` lists every "
                                f"bad block)")

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
        """Rows [start, stop) as uint8 (n, H, W, C), every block they touch checked against its checksum.

        Whole blocks are read (a block is one HDF5 chunk); the last one is kept, so consecutive reads (extract,
        evaluation) read and hash each block once."""
        stop = self.n if stop is None else min(stop, self.n)
        if stop <= start:
            return np.empty((0,) + tuple(self.shape[1:]), dtype=np.uint8)
        r = self.block_rows
        first, last = start // r, (stop - 1) // r
        with self._lock:
            parts, b = [], first
            if self._edge is not None and self._edge[0] == first:
                parts.append(self._edge[1])
                b += 1
            if b <= last:
                fresh = self.reader().read_blocks(b, last)  # checked block by block
                parts.append(fresh)
                self._edge = (last, fresh[(last - b) * r:].copy())  # a copy: callers may write to what they get
        rows = parts[0] if len(parts) == 1 and b == first else np.concatenate(parts)
        return rows[start - first * r:stop - first * r]

    def reader(self) -> StoreReader:
        """This thread's open handle on images.h5 (opened on first use, kept while the thread lives)."""
        reader = getattr(self._readers, "reader", None)
        if reader is None:
            reader = self._readers.reader = StoreReader(self)
        return reader

    def ids(self) -> list[str]:
        with h5py.File(self.root / "images.h5", "r") as f:
            ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][:]]
        integrity = self.manifest.get("integrity")
        if integrity is not None and _ids_sha(ids) != integrity["ids_sha256"]:
            raise self._damaged("the item ids differ from the manifest's checksum")
        return ids

    def regions(self) -> np.ndarray | None:
        """int32 (N, 4) (y0, x0, h, w): each row's valid region in pixels, in a letterboxed store (`prepare --fit
        letterbox`); None when every row is the whole image (every other store, and stores from before regions
        existed). Read once, checked against the manifest's checksum."""
        if not hasattr(self, "_regions"):
            with h5py.File(self.root / "images.h5", "r") as f:
                regions = f["regions"][:] if "regions" in f else None
            expected = (self.manifest.get("integrity") or {}).get("regions_sha256")
            actual = None if regions is None else hashlib.sha256(_region_bytes(regions)).hexdigest()
            if actual != expected:
                what = ("missing" if regions is None else "not recorded in the manifest" if expected is None
                        else "different from the manifest's checksum")
                raise self._damaged(f"the valid regions (images.h5 `regions`) are {what}")
            self._regions = regions
        return self._regions

    def problems(self) -> list[str]:
        """Re-hash the whole store: every bad block and a fingerprint mismatch, one line each (empty: sound)."""
        out = []
        with h5py.File(self.root / "images.h5", "r") as f:
            images = f["images"]
            r = self.block_rows
            for k in range(len(self.digests)):
                block = images[k * r:(k + 1) * r]
                if hashlib.sha256(np.ascontiguousarray(block)).digest() != self.digests[k].tobytes():
                    out.append(f"rows {k * r}..{k * r + len(block) - 1} (block {k}): checksum mismatch")
            try:
                actual = fingerprint(self.ids(), images, self.labels, self.split, self.regions())
            except CompressError as e:
                return out + [str(e)]
        if actual != self.fingerprint:
            out.append(f"contents do not match the manifest fingerprint ({actual[:12]} != {self.fingerprint[:12]})")
        return out

    def verify(self) -> None:
        """Re-hash the whole store against its manifest; raise on any difference."""
        problems = self.problems()
        if problems:
            raise self._damaged("; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)"
                                                          if len(problems) > 3 else ""))
