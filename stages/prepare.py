"""Stage `prepare`: turn a data source into the packed uint8 image store (see pipeline/imagestore.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import CompressError
from pipeline.imagestore import write_image_store

DATASETS = ("digits",)


@dataclass
class PrepareConfig:
    dataset: str = "digits"
    out: Path = Path("data/digits")
    source: Path | None = None  # a folder or file for datasets that are not embedded
    size: int | None = None  # pre-resize to this side in pixels; None keeps the native size


def _digits():
    """scikit-learn's 1,797 real 8x8 digits (0..16 grey levels), shipped inside the package: no download."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    # Fixed split, independent of any library's RNG: every fifth image is validation.
    split = (np.arange(len(images)) % 5 == 4).astype(np.uint8)
    ids = [f"digits/{i:04d}" for i in range(len(images))]
    return images, d.target, split, ids, [str(c) for c in range(10)], "sklearn.datasets.load_digits"


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def prepare(cfg: PrepareConfig) -> dict:
    if cfg.dataset == "digits":
        images, labels, split, ids, classes, source = _digits()
    else:
        raise CompressError(f"unknown dataset {cfg.dataset!r}; use one of {', '.join(DATASETS)}")
    if cfg.size is not None:
        if cfg.size < 4:
            raise CompressError(f"--size {cfg.size} is too small; use at least 4 pixels")
        images = _resize(images, cfg.size)
    return write_image_store(cfg.out, images, labels, split, ids, dataset=cfg.dataset, classes=classes,
                             source=source, arguments=asdict(cfg))
