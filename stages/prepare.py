"""Stage `prepare`: turn a data source into the packed uint8 image store (see pipeline/data/imagestore.py).

Readers live in pipeline/data/sources (one module per kind of source). This stage resizes, deals with undecodable
items (a report, then fail, or skip and record in the manifest) and writes the store.

`--size` fits every image to one square (`--fit`): letterboxed (long side to the size, padded, each row's
valid region recorded in the store) or centre-cropped (short side to the size).

It streams: the listing is cut to `--limit`, then decoded one window at a time (workers x window images in
memory, whatever N) into a spool file beside the store, each window fsynced and recorded before the next; a
killed run resumes from its last complete window. The store is then written from the spool, block checksums
and fingerprint computed from the same reads, and the spool removed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache.lock import StoreLock
from pipeline.runtime.atomic import make_dir, remove_temporaries, write_text
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import write_image_store
from pipeline.data.sources import READERS, Plan, plan
from pipeline.data.sources.decode import FITS, PAD, letterbox_region
from pipeline.runtime.atomic import io_error
from pipeline.runtime.settings import setting

DATASETS = tuple(READERS)
REPORT = "prepare-report.json"  # written beside the store whenever some items could not be decoded


@dataclass
class PrepareConfig:
    """Every setting of `prepare`, with its default, help and range (pipeline/runtime/settings.py); the CLI's options
    are generated from these fields."""
    out: Path = setting(MISSING, "Image-store folder to write.")
    dataset: str = setting("digits", "Source to pack. digits is embedded in scikit-learn (no download); fashion-mnist "
                                     "reads /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist) "
                                     "by default.", choices=DATASETS)
    source: Path | None = setting(None, "Folder or file of the source: the python-format CIFAR folder, the "
                                        "ImageFolder root (with train/ and val/ subfolders, or class folders and a "
                                        "fixed split), or an .h5 file.", shown="the dataset's own")
    size: int | None = setting(None, "Pre-resize every image to SIZE x SIZE px (see --fit). Pick a little above the "
                                     "training resolution; crops are taken from these pixels.",
                               shown="native", low=4)
    fit: str | None = setting(None, "How --size fits an image into the square. letterbox: long side to SIZE, aspect "
                                    "kept, padded with 0; each row's valid region is recorded, and training crops "
                                    "and the evaluation view stay inside it (the whole photo, as torchvision sees "
                                    "it). centre: short side to SIZE, then the centre square (loses a 4:3 "
                                    "photo's sides).", choices=FITS,
                              shown="letterbox for imagefolder and non-square images, centre for square ones")
    skip_bad: bool = setting(False, "Leave out images that cannot be decoded (listed in the manifest's `skipped`) "
                                    "instead of failing.")
    workers: int = setting(min(4, os.cpu_count() or 1), "Decoding processes for image files (one thread each); 0 "
                                                        "decodes in this process.", low=0)
    limit: int | None = setting(None, "Keep only the first N items of the source's order, before decoding (smoke "
                                      "runs).", shown="all", low=1)
    block: int | None = setting(None, "Images decoded per window, each a resume point for a killed run.",
                                shown="~64 MiB of pixels, 64-4096 images", low=1)


def resize_square(images: np.ndarray, size: int, block: int = 4096) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, size, size, C): short side to `size` (antialiased bilinear), centre crop."""
    import torch
    import torch.nn.functional as F
    n, h, w, c = images.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = np.empty((n, size, size, c), np.uint8)
    for lo in tqdm(range(0, n, block), desc="resize", unit="block", disable=None):
        x = torch.from_numpy(images[lo:lo + block]).permute(0, 3, 1, 2).float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        x = x[:, :, top:top + size, left:left + size]
        out[lo:lo + block] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _report_bad(cfg: PrepareConfig, bad: list[dict], total: int) -> None:
    """Write the list of undecodable items; without --skip-bad, fail naming the first one."""
    make_dir(cfg.out, "image store folder")
    report = cfg.out / REPORT
    write_text(report, json.dumps({"dataset": cfg.dataset, "source": str(cfg.source), "total": total,
                                   "bad": bad, "skipped": cfg.skip_bad}, indent=2) + "\n")
    if not cfg.skip_bad:
        first = bad[0]
        raise CompressError(f"{len(bad)} of {total} images could not be decoded (first: {first['path']}: "
                            f"{first['error']}); the list is in {report}; fix or remove them, or pass "
                            f"--skip-bad to leave them out (recorded in the manifest)")


def prepare(cfg: PrepareConfig) -> dict:
    if cfg.dataset not in READERS:
        raise CompressError(f"unknown dataset {cfg.dataset!r}; use one of {', '.join(DATASETS)}")
    if cfg.size is not None and cfg.size < 4:
        raise CompressError(f"--size {cfg.size} is too small; use at least 4 pixels")
    if cfg.limit is not None and cfg.limit < 1:
        raise CompressError(f"--limit {cfg.limit} keeps no images; use a positive number or leave it out")
    if cfg.block is not None and cfg.block < 1:
        raise CompressError(f"--block {cfg.block} holds no images; use a positive number or leave it out")
    if cfg.fit is not None and cfg.fit not in FITS:
        raise CompressError(f"--fit {cfg.fit!r} is not a fit; use one of {', '.join(FITS)}")
    if cfg.fit is not None and cfg.size is None:
        raise CompressError(f"--fit {cfg.fit} fits images to --size, which is not given; pass --size PX or "
                            f"leave --fit out to keep native sizes")
    cfg.out = Path(cfg.out)
    if cfg.out.exists() and not cfg.out.is_dir():  # before the (long) decoding, not after it
        raise CompressError(f"--out {cfg.out} is a file, not a folder; choose another path or remove it")
    src = plan(cfg.dataset, cfg.source, cfg.size, cfg.workers, cfg.limit, cfg.fit)
    try:
        if not len(src.ids):
            raise CompressError(f"{cfg.dataset}: no images to store from {src.source}")
        make_dir(cfg.out, "image store folder")
        with StoreLock(cfg.out):  # one writer per store folder, the spool included
            remove_temporaries(cfg.out)
            return _stream(cfg, src)
    finally:
        src.close()


def _stream(cfg: PrepareConfig, src: Plan) -> dict:
    """Decode window by window into the spool (resuming a killed run's), then write the store from it."""
    shape = src.shape if cfg.size is None or src.resized else (cfg.size, cfg.size, src.shape[2])
    fit, regions = _fit(cfg, src)
    window = cfg.block or max(64, min(4096, (64 << 20) // int(np.prod(shape))))
    key = hashlib.sha256(json.dumps({"dataset": cfg.dataset, "source": src.source, "size": cfg.size, "fit": fit,
                                     "shape": list(shape), "ids": src.ids}).encode()).hexdigest()
    spool = Spool(cfg.out, shape, key, len(src.ids))
    bar = tqdm(total=len(src.ids), initial=spool.done, desc="decode", unit="img", disable=None)
    while spool.done < len(src.ids):
        lo = spool.done
        items = src.read(lo, min(lo + window, len(src.ids)))
        if cfg.size is not None and not src.resized:
            items = _resize_items(items, cfg.size, fit)
        keep, bad = [], []
        for k, (x, err) in enumerate(items, start=lo):
            if err is not None:
                bad.append({"id": src.ids[k], "path": src.paths[k] if src.paths else src.ids[k], "error": err})
            elif x.shape != shape:  # only a header that lied: the shape was fixed from the headers
                raise CompressError(f"{src.paths[k] if src.paths else src.ids[k]}: decoded as {x.shape}, the store "
                                    f"holds {shape}; pass --size PX to resize each image to PX x PX")
            else:
                keep.append(k)
        spool.append(np.stack([items[k - lo][0] for k in keep]) if keep else None, keep, bad, len(items))
        bar.update(len(items))
    bar.close()
    rows, bad = np.array(spool.rows, dtype=np.int64), spool.bad
    if bad:
        _report_bad(cfg, bad, len(src.ids))  # raises without --skip-bad; the spool stays for the re-run
    elif (cfg.out / REPORT).exists():
        (cfg.out / REPORT).unlink()  # a stale report from an earlier run would mislead
    if not len(rows):
        raise CompressError(f"{cfg.dataset}: no images left to store from {src.source}")
    m = write_image_store(cfg.out, spool.reader(), src.labels[rows], src.split[rows], [src.ids[k] for k in rows],
                          dataset=cfg.dataset, classes=src.classes, source=src.source, arguments=asdict(cfg),
                          skipped=bad, locked=True, regions=None if regions is None else regions[rows], fit=fit)
    spool.remove()
    return m


def _fit(cfg: PrepareConfig, src: Plan) -> tuple[str | None, np.ndarray | None]:
    """(the fit, every listed item's valid region or None). A reader that resized says how; otherwise `prepare`
    resizes windows of one shape: letterboxed when asked, or by default when that shape is not square."""
    if cfg.size is None:
        return None, None
    if src.resized:
        return src.fit, src.regions
    h, w = src.shape[:2]
    fit = cfg.fit or ("letterbox" if h != w else "centre")
    if fit == "centre":
        return fit, None
    return fit, np.tile(np.array(letterbox_region(h, w, cfg.size), np.int32), (len(src.ids), 1))


def resize_letterbox(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, size, size, C): long side to `size` (antialiased bilinear, as `resize_square`),
    aspect kept, centred on PAD (at `letterbox_region`)."""
    n, h, w, c = images.shape
    y0, x0, rh, rw = letterbox_region(h, w, size)
    out = np.full((n, size, size, c), PAD, np.uint8)
    out[:, y0:y0 + rh, x0:x0 + rw] = _resize(images, rh, rw)
    return out


def _resize(images: np.ndarray, nh: int, nw: int, block: int = 4096) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, nh, nw, C), antialiased bilinear (the filter of `resize_square`)."""
    import torch
    import torch.nn.functional as F
    n, h, w, c = images.shape
    out = np.empty((n, nh, nw, c), np.uint8)
    for lo in range(0, n, block):
        x = torch.from_numpy(images[lo:lo + block]).permute(0, 3, 1, 2).float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out[lo:lo + block] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _resize_items(items: list, size: int, fit: str = "centre") -> list:
    """Bring decoded rows of one shape to size x size (an hdf5 source's window)."""
    good = [x for x, err in items if err is None]
    if not good:
        return items
    small = iter((resize_letterbox if fit == "letterbox" else resize_square)(np.stack(good), size))
    return [(next(small), None) if err is None else (None, err) for x, err in items]


class Spool:
    """The decoded rows of an unfinished `prepare`, beside the store: `prepare-spool.u8` (raw uint8 rows, its
    full size reserved up front so a full disk fails at once) and `prepare-spool.json` (how many listed items
    are done, which were undecodable, and the key of the request). Only a matching key is resumed."""

    def __init__(self, out: Path, shape: tuple, key: str, n: int):
        self.data, self.meta = out / "prepare-spool.u8", out / "prepare-spool.json"
        self.shape, self.row = tuple(int(s) for s in shape), int(np.prod(shape))
        self.key, self.done, self.bad, self.bad_rows = key, 0, [], []
        try:
            state = json.loads(self.meta.read_text()) if self.meta.is_file() and self.data.is_file() else {}
        except (OSError, ValueError):
            state = {}
        if state.get("key") == key:
            self.done, self.bad, self.bad_rows = state["done"], state["bad"], state["bad_rows"]
        else:
            self.remove()
        try:
            with open(self.data, "ab") as f:
                os.posix_fallocate(f.fileno(), 0, max(1, n * self.row))  # ENOSPC now, before any decoding
        except OSError as e:
            if not self.done:
                self.remove()
            raise io_error(out / "images.h5", e) from None

    @property
    def kept(self) -> int:
        return self.done - len(self.bad_rows)

    @property
    def rows(self) -> list[int]:
        """The listing's index of every spooled row."""
        bad = set(self.bad_rows)
        return [k for k in range(self.done) if k not in bad]

    def append(self, block, keep: list[int], bad: list[dict], count: int) -> None:
        """Rows of one window, on disk before the record that says they are (a kill between: redone)."""
        try:
            if block is not None:
                fd = os.open(self.data, os.O_WRONLY)
                try:
                    os.pwrite(fd, np.ascontiguousarray(block).tobytes(), self.kept * self.row)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            raise io_error(self.data, e) from None
        kept = set(keep)
        self.bad_rows += [self.done + k for k in range(count) if self.done + k not in kept]
        self.bad += bad
        self.done += count
        write_text(self.meta, json.dumps({"key": self.key, "done": self.done, "bad": self.bad,
                                          "bad_rows": self.bad_rows}) + "\n")

    def reader(self) -> "SpoolRows":
        return SpoolRows(self.data, (self.kept,) + self.shape)

    def remove(self) -> None:
        self.meta.unlink(missing_ok=True)
        self.data.unlink(missing_ok=True)


class SpoolRows:
    """The spooled rows as a read-only (N, H, W, C) uint8 'array': slicing reads them from the file."""
    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, shape: tuple):
        self.path, self.shape, self.row = path, shape, int(np.prod(shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, s: slice) -> np.ndarray:
        lo, hi, _ = s.indices(self.shape[0])
        with open(self.path, "rb") as f:
            f.seek(lo * self.row)
            buf = f.read(max(0, hi - lo) * self.row)
        return np.frombuffer(buf, np.uint8).reshape((max(0, hi - lo),) + tuple(self.shape[1:]))
