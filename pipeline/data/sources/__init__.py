"""Readers that turn one kind of data source into rows for the image store, one module per kind.

Every reader returns a `Loaded`: images in a fixed, documented order (the order that becomes row i of every
artifact), labels, a train/val split, unique ids, class names, a one-line description of the source, and the
items it could not decode (`bad`), which `stages.prepare` reports and never drops silently.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# dataset name -> module under pipeline.data.sources defining `load(source, size, workers) -> Loaded`
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


def load(dataset: str, source: Path | None, size: int | None, workers: int) -> Loaded:
    module = importlib.import_module(f"pipeline.data.sources.{READERS[dataset]}")
    return module.load(dataset, source, size, workers)


def every_fifth_val(n: int) -> np.ndarray:
    """The fixed split used when a source has none: every fifth item is validation (no RNG involved)."""
    return (np.arange(n) % 5 == 4).astype(np.uint8)
