"""An existing HDF5 file of decoded images.

Expected datasets (row i is item i):
    images   uint8 (N, H, W) or (N, H, W, C), C in {1, 3}   required
    labels   integer (N,)                                   required
    split    integer (N,), 0 train / 1 val                  optional (default: every fifth row is val)
    ids      strings (N,), unique                           optional (default: "<file stem>/<row>")
    classes  strings (K,), class names                      optional (default: "0".."K-1")

`--limit N` reads only the first N rows; the pixels are read window by window, never whole.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline.runtime.errors import CompressError
from pipeline.data.sources import Loaded, Plan, every_fifth_val


def _strings(ds, limit=None) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[:limit]]


def plan(dataset, source, size, workers, limit, fit=None) -> Plan:
    """Labels, split and ids read now; the pixels read window by window from the file (first `limit` rows)."""
    path = Path(source) if source is not None else None
    d = _columns(source, limit)
    shape = tuple(d.images.shape[1:]) + ((1,) if len(d.images.shape) == 3 else ())

    def read(lo: int, hi: int):
        try:
            with h5py.File(path, "r") as f:
                x = f["images"][lo:hi]
        except OSError as e:
            raise CompressError(f"{path}: unreadable HDF5 file ({e})") from None
        return [(r[..., None] if r.ndim == 2 else r, None) for r in x]

    return Plan(d.labels, d.split, d.ids, d.classes, d.source, shape, read)


def _columns(source, limit) -> Loaded:
    """Everything but the pixels (`images` is left as the h5py dataset's shape-and-dtype stand-in)."""
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
            shape = f["images"].shape
            # a zero-byte stand-in for the pixels: their shape and dtype only
            images = np.lib.stride_tricks.as_strided(np.zeros(1, f["images"].dtype),
                                                     (min(shape[0], limit or shape[0]),) + shape[1:],
                                                     (0,) * len(shape))
            labels = f["labels"][:limit].astype(np.int64)
            split = f["split"][:limit].astype(np.uint8) if "split" in f else every_fifth_val(len(labels))
            ids = _strings(f["ids"], limit) if "ids" in f else [f"{path.stem}/{i:07d}" for i in range(len(labels))]
            classes = _strings(f["classes"]) if "classes" in f else None
    except OSError as e:
        raise CompressError(f"{path}: unreadable HDF5 file ({e})")
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise CompressError(f"{path}: `images` is {images.dtype} {images.shape}; expected uint8 (N, H, W[, C])")
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise CompressError(f"{path}: `images` has {images.shape[-1]} channels; expected 1 or 3 (N, H, W, C)")
    if not len(images) == len(labels) == len(split) == len(ids):
        raise CompressError(f"{path}: images {len(images)}, labels {len(labels)}, split {len(split)}, "
                            f"ids {len(ids)} rows differ")
    if set(np.unique(split)) - {0, 1}:
        raise CompressError(f"{path}: `split` holds values other than 0 (train) and 1 (val)")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    return Loaded(images, labels, split, ids, classes, str(path))
