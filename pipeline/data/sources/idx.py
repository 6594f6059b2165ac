"""Fashion-MNIST from its idx files (the Debian package dataset-fashion-mnist puts them, gzipped, under
/usr/share/datasets/fashion-mnist). The 60,000 training images come first, then the 10,000 test images,
which are the val split."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pipeline.runtime.errors import CompressError
from pipeline.data.sources import Loaded

DEFAULT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally .gz) of unsigned bytes as an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CompressError(f"{path}: unreadable idx file ({e}); re-install or re-download it")
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise CompressError(f"{path}: not an unsigned-byte idx file (header {data[:4].hex()}); "
                            f"pass the folder holding the original Fashion-MNIST files with --source")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise CompressError(f"{path}: idx header declares {dims} = {int(np.prod(dims))} bytes but holds "
                            f"{body.size}; the file is truncated, re-install it")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise CompressError(f"{folder}: no {stem}(.gz); install the Debian package dataset-fashion-mnist "
                        f"or pass --source FOLDER with the four idx files")


def load(dataset, source, size, workers) -> Loaded:
    folder = Path(source) if source is not None else DEFAULT
    if not folder.is_dir():
        raise CompressError(f"Fashion-MNIST folder {str(folder)!r} does not exist; install the Debian "
                            f"package dataset-fashion-mnist or pass --source FOLDER")
    parts = []
    for part, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise CompressError(f"{folder}: {prefix} images {x.shape} and labels {y.shape} do not match")
        parts.append((part, x, y))
    images = np.concatenate([x for _, x, _ in parts])[..., None]
    labels = np.concatenate([y for _, _, y in parts]).astype(np.int64)
    split = np.concatenate([np.full(len(y), int(part == "test"), np.uint8) for part, _, y in parts])
    ids = [f"fashion-mnist/{part}/{i:05d}" for part, _, y in parts for i in range(len(y))]
    return Loaded(images, labels, split, ids, CLASSES, str(folder))
