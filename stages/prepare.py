"""Stage `prepare`: turn a data source into the packed uint8 image store (see pipeline/data/imagestore.py).

Readers live in pipeline/data/sources (one module per kind of source). This stage resizes, deals with undecodable
items (a report, then fail, or skip and record in the manifest) and writes the store.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.runtime.atomic import make_dir, write_text
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import write_image_store
from pipeline.data.sources import READERS, load

DATASETS = tuple(READERS)
REPORT = "prepare-report.json"  # written beside the store whenever some items could not be decoded


@dataclass
class PrepareConfig:
    dataset: str = "digits"
    out: Path = Path("data/digits")
    source: Path | None = None  # a folder or file for datasets that are not embedded
    size: int | None = None  # pre-resize: short side to this many pixels, then centre crop; None keeps native
    skip_bad: bool = False  # leave undecodable images out (recorded in the manifest) instead of failing
    workers: int = min(4, os.cpu_count() or 1)  # decoding processes for file-based sources
    limit: int | None = None  # keep only the first N items (smoke runs, tests); recorded in the manifest


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
    cfg.out = Path(cfg.out)
    if cfg.out.exists() and not cfg.out.is_dir():  # before the (long) decoding, not after it
        raise CompressError(f"--out {cfg.out} is a file, not a folder; choose another path or remove it")
    data = load(cfg.dataset, cfg.source, cfg.size, cfg.workers)
    if data.bad:
        _report_bad(cfg, data.bad, len(data.ids) + len(data.bad))
    elif (cfg.out / REPORT).exists():
        (cfg.out / REPORT).unlink()  # a stale report from an earlier run would mislead
    if not len(data.images):
        raise CompressError(f"{cfg.dataset}: no images left to store from {data.source}")
    images, labels, split, ids = data.images, data.labels, data.split, data.ids
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise CompressError(f"--limit {cfg.limit} keeps no images; use a positive number or leave it out")
        images, labels, split, ids = images[:cfg.limit], labels[:cfg.limit], split[:cfg.limit], ids[:cfg.limit]
    if cfg.size is not None and not data.resized:
        images = resize_square(images, cfg.size)
    return write_image_store(cfg.out, images, labels, split, ids, dataset=cfg.dataset,
                             classes=data.classes, source=data.source, arguments=asdict(cfg),
                             skipped=data.bad)
