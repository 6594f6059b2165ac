"""A store of random images, for tests of reading and checking stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.imagestore import write_image_store


def random_store(path: Path, n: int, shape: tuple, classes: int, test_every: int) -> np.ndarray:
    """Writes n random uint8 images of `shape` (label i % classes; every `test_every`-th one is a test image)
    to a store at `path`; returns the images."""
    images = np.random.default_rng(0).integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
    split = (np.arange(n) % test_every == test_every - 1).astype(np.uint8)
    write_image_store(path, images, np.arange(n) % classes, split, [f"x/{i}" for i in range(n)], dataset="t",
                      classes=[chr(97 + c) for c in range(classes)], source="test")
    return images
