"""An existing HDF5 file of decoded images.

Expected datasets (row i is item i):
    images   uint8 (N, H, W) or (N, H, W, C), C in {1, 3}   required
    labels   integer (N,)                                   required
    split    integer (N,), 0 train / 1 val                  optional (default: every fifth row is val)
    ids      strings (N,), unique                           optional (default: "<file stem>/<row>")
    classes  strings (K,), class names                      optional (default: "0".."K-1")
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline.runtime.errors import CompressError
from pipeline.data.sources import Loaded, every_fifth_val


def _strings(ds) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[:]]


def load(dataset, source, size, workers) -> Loaded:
    if source is None or not Path(source).is_file():
        raise CompressError(f"--dataset hdf5 needs --source FILE.h5 with `images` and `labels` datasets; "
                            f"got {str(source)!r}")
    path = Path(source)
    try:
        with h5py.File(path, "r") as f:
            for key in ("images", "labels"):
                if key not in f:
                    raise CompressError(f"{path}: no `{key}` dataset (has {', '.join(f.keys()) or 'nothing'}); "
                                        f"see docs/data.md for the expected layout")
            images, labels = f["images"][:], f["labels"][:].astype(np.int64)
            split = f["split"][:].astype(np.uint8) if "split" in f else every_fifth_val(len(labels))
            ids = _strings(f["ids"]) if "ids" in f else [f"{path.stem}/{i:07d}" for i in range(len(labels))]
            classes = _strings(f["classes"]) if "classes" in f else None
    except OSError as e:
        raise CompressError(f"{path}: unreadable HDF5 file ({e})")
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise CompressError(f"{path}: `images` is {images.dtype} {images.shape}; expected uint8 (N, H, W[, C])")
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] not in (1, 3):
        raise CompressError(f"{path}: `images` has {images.shape[-1]} channels; expected 1 or 3 (N, H, W, C)")
    if not len(images) == len(labels) == len(split) == len(ids):
        raise CompressError(f"{path}: images {len(images)}, labels {len(labels)}, split {len(split)}, "
                            f"ids {len(ids)} rows differ")
    if set(np.unique(split)) - {0, 1}:
        raise CompressError(f"{path}: `split` holds values other than 0 (train) and 1 (val)")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    return Loaded(images, labels, split, ids, classes, str(path))
