"""Decode image files in parallel worker processes, one window at a time, returning failures beside the rest.

A file that cannot be decoded is returned as an error string beside its index, never dropped here: the caller
decides whether that fails the run or becomes a recorded skip.
"""
from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def fit_square(img, size: int):
    """Resize so the short side is `size` (antialiased), then centre-crop to size x size."""
    from PIL import Image
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_file(path: str, size: int | None) -> tuple[np.ndarray | None, str | None]:
    """(uint8 (H, W, C) with C 1 for grey files and 3 otherwise, None) or (None, error message)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode: a truncated file fails here, not later
            img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
            if size is not None:
                img = fit_square(img, size)
            x = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad item to report
        return None, f"{type(e).__name__}: {e}"
    return (x[..., None] if x.ndim == 2 else x), None


def _one_thread():
    """Workers share the cores: one torch/BLAS thread each (decode itself is single-threaded PIL)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _job(args):
    return decode_file(*args)


def header(path: str) -> tuple[tuple[int, int] | None, bool]:
    """((H, W), grey) from the file's header alone (no pixel decode); (None, False) when it cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return (img.size[1], img.size[0]), img.mode in _GRAY_MODES
    except Exception:  # noqa: BLE001 - the decode pass reports it, with its error
        return None, False


class Decoder:
    """A pool of `workers` decoding processes kept for a whole run (`workers` <= 1: this process).

    Work is handed out one window at a time, so at most one window of decoded images is in memory."""

    def __init__(self, workers: int):
        self.pool = mp.get_context("spawn").Pool(workers, initializer=_one_thread) if workers > 1 else None

    def map(self, fn, jobs: list, chunksize: int = 16) -> list:
        if self.pool is None:
            return [fn(j) for j in jobs]
        return self.pool.map(fn, jobs, chunksize=max(1, min(chunksize, len(jobs) // (4 * self.pool._processes) or 1)))

    def decode(self, paths: list[str], size: int | None) -> list[tuple[np.ndarray | None, str | None]]:
        return self.map(_job, [(p, size) for p in paths])

    def headers(self, paths: list[str]) -> list[tuple[tuple[int, int] | None, bool]]:
        return self.map(header, paths, chunksize=256)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None
