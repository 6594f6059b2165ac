"""scikit-learn's 1,797 real 8x8 digits (0..16 grey levels), shipped inside the package: no download."""
from __future__ import annotations

import numpy as np

from pipeline.data.sources import Loaded, every_fifth_val


def load(dataset, source, size, workers) -> Loaded:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    ids = [f"digits/{i:04d}" for i in range(len(images))]
    return Loaded(images, d.target, every_fifth_val(len(images)), ids, [str(c) for c in range(10)],
                  "sklearn.datasets.load_digits")
