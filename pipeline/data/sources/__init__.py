"""Readers that turn one kind of data source into rows for the image store, one module per kind.

The embedded readers return a `Loaded`: images in a fixed, documented order (the order that becomes row i of every
artifact), labels, a train/val split, unique ids, class names, a one-line description of the source, and the
items it could not decode (`bad`), which `stages.prepare` reports and never drops silently.

File-based readers (imagefolder, hdf5) define `plan(...) -> Plan` instead: the same columns without the pixels,
so `prepare` can cut them to `--limit` first and then decode window by window straight into the store. The
small embedded sources are loaded whole and wrapped in a `Plan`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

# dataset name -> module under pipeline.data.sources defining `load(dataset, source, size, workers) -> Loaded`
# or `plan(dataset, source, size, workers, limit, fit) -> Plan`
READERS = {
    "digits": "digits",
    "fashion-mnist": "idx",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "imagefolder": "imagefolder",
    "hdf5": "hdf5",
}


@dataclass
class Loaded:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    split: np.ndarray  # uint8 (N,), 0 train, 1 val
    ids: list[str]
    classes: list[str]
    source: str
    bad: list[dict] = field(default_factory=list)  # {"id", "path", "error"} of undecodable items
    resized: bool = False  # True when the reader already brought images to the requested size


def every_fifth_val(n: int) -> np.ndarray:
    """The fixed split used when a source has none: every fifth item is validation (no RNG involved)."""
    return (np.arange(n) % 5 == 4).astype(np.uint8)


Item = tuple["np.ndarray | None", "str | None"]  # (uint8 (H, W, C), None) or (None, error message)


@dataclass
class Plan:
    """A source listed but not yet decoded: `read(lo, hi)` decodes items lo..hi-1 of the listing, in order."""
    labels: np.ndarray
    split: np.ndarray
    ids: list[str]
    classes: list[str]
    source: str
    shape: tuple[int, int, int]  # (H, W, C) of every stored row
    read: Callable[[int, int], list[Item]]
    paths: list[str] | None = None  # the file of each item, for the report of undecodable ones
    resized: bool = False  # True when `read` already returns images at the requested size
    close: Callable[[], None] = lambda: None
    fit: str | None = None  # how `read` resized ("letterbox", "centre"); None when it did not
    regions: np.ndarray | None = None  # int32 (N, 4) (y0, x0, h, w) of each item, when `read` letterboxes


def plan(dataset: str, source: Path | None, size: int | None, workers: int, limit: int | None,
         fit: str | None = None) -> Plan:
    """The source listed and cut to its first `limit` items before anything is decoded. `fit` is how a reader
    that resizes as it decodes (imagefolder) fits images to `size` (None: its default); the others leave the
    resizing, and the fit, to `prepare`."""
    module = importlib.import_module(f"pipeline.data.sources.{READERS[dataset]}")
    if hasattr(module, "plan"):
        return module.plan(dataset, source, size, workers, limit, fit)
    d = module.load(dataset, source, size, workers)  # small embedded sets: decoded whole, then cut
    images, keep = d.images[:limit], slice(0, limit)
    return Plan(d.labels[keep], d.split[keep], d.ids[keep], d.classes, d.source, tuple(images.shape[1:]),
                lambda lo, hi: [(x, None) for x in images[lo:hi]], resized=d.resized)
