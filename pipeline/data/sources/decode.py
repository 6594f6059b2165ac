"""Decode image files in parallel worker processes, one window at a time, returning failures beside the rest.

A file that cannot be decoded is returned as an error string beside its index, never dropped here: the caller
decides whether that fails the run or becomes a recorded skip.
"""
from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
FITS = ("letterbox", "centre")  # how `--size` brings an image to the square: the whole photo, or its centre
PAD = 0  # letterbox padding: never sampled (crops, render and the eval view stay in the region), so any value
         # would do; 0 needs no dataset statistics and tells padding from photo at a glance


def fit_square(img, size: int):
    """Resize so the short side is `size` (antialiased), then centre-crop to size x size."""
    from PIL import Image
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def letterbox_region(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(y0, x0, h, w): where a height x width image lands in the size x size square once its long side is resized
    to `size` (aspect kept, centred). A square image fills the square."""
    scale = size / max(height, width)
    h, w = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
    return (size - h) // 2, (size - w) // 2, h, w


def fit_letterbox(img, size: int):
    """Resize so the long side is `size` (antialiased, the same filter as `fit_square`), then pad to size x size
    with PAD around it; the image lies at `letterbox_region`."""
    from PIL import Image
    y0, x0, h, w = letterbox_region(img.size[1], img.size[0], size)
    canvas = Image.new(img.mode, (size, size), PAD)
    canvas.paste(img.resize((w, h), Image.BICUBIC, reducing_gap=None), (x0, y0))
    return canvas


def decode_file(path: str, size: int | None, fit: str = "letterbox",
                hw: tuple[int, int] | None = None) -> tuple[np.ndarray | None, str | None]:
    """(uint8 (H, W, C) with C 1 for grey files and 3 otherwise, None) or (None, error message).

    With `size`, `fit` brings the image to size x size: "letterbox" (the default of ImageFolder sources) keeps
    the whole image, "centre" keeps its centre square. `hw`: the (H, W) its header gave, from which the store's
    region was computed; a file that decodes to another size is an error, not a misplaced region."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode: a truncated file fails here, not later
            if hw is not None and (img.size[1], img.size[0]) != tuple(hw):
                return None, f"decoded as {img.size[1]}x{img.size[0]}, its header says {hw[0]}x{hw[1]}"
            img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
            if size is not None:
                img = fit_letterbox(img, size) if fit == "letterbox" else fit_square(img, size)
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

    def decode(self, paths: list[str], size: int | None, fit: str = "letterbox",
               hws: list | None = None) -> list[tuple[np.ndarray | None, str | None]]:
        return self.map(_job, [(p, size, fit, None if hws is None else hws[k]) for k, p in enumerate(paths)])

    def headers(self, paths: list[str]) -> list[tuple[tuple[int, int] | None, bool]]:
        return self.map(header, paths, chunksize=256)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None
