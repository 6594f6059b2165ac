"""The evaluation's feature matrix: held once, in fp16, and read one block at a time.

Every protocol reads the same (rows, D) fp16 array of l2-normalised features, which is the only N x D array
evaluation keeps: 1.28 M x 2048 is 5.2 GB. Train and val are views of it (`Layout`): when each split is one
contiguous range of the image store the array is in store order; when they are interleaved the embedding pass
(or the loader of a stored copy) writes the rows train-first once, so no `x[train]` copy is ever made.
Anything that needs float32 converts one block of rows at a time (`unit_block`), on the device that computes.

The array lives in RAM, or (`memmap`) in a memory-mapped scratch file unlinked at creation, so the kernel can
page it out and nothing is left behind. The stored copy beside the metrics (`NAME.features.npy`) is always in
store order, written and read block by block.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.runtime.atomic import write_atomic
from pipeline.runtime.errors import CompressError

DTYPE = np.float16
IO_ROWS_BYTES = 16 << 20  # bytes of rows per read / write of the stored copy


@dataclass(frozen=True)
class Layout:
    """Where each image-store row sits in the in-memory feature matrix.

    `position` is None when train and val are each one contiguous range (the matrix is in store order);
    otherwise position[i] is the matrix row of store row i: train rows first, then val rows, each in store order.
    """
    train: np.ndarray  # store indices of the train rows, ascending
    val: np.ndarray
    position: np.ndarray | None
    train_slice: slice
    val_slice: slice

    @classmethod
    def of(cls, train, val, n: int) -> "Layout":
        train, val = np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)
        if len(train) + len(val) != n or len(np.union1d(train, val)) != n:
            raise CompressError(f"train ({len(train)}) and val ({len(val)}) rows must cover the {n} images once; "
                                f"check the image store's split")
        if _contiguous(train) and _contiguous(val):
            return cls(train, val, None, _span(train), _span(val))
        position = np.empty(n, dtype=np.int64)
        position[train] = np.arange(len(train))
        position[val] = len(train) + np.arange(len(val))
        return cls(train, val, position, slice(0, len(train)), slice(len(train), n))

    @property
    def rows(self) -> int:
        return len(self.train) + len(self.val)

    def train_rows(self, x):
        return x[self.train_slice]

    def val_rows(self, x):
        return x[self.val_slice]

    def matrix_rows(self, store_rows) -> np.ndarray:
        """Matrix rows of the given store rows."""
        store_rows = np.asarray(store_rows, dtype=np.int64)
        return store_rows if self.position is None else self.position[store_rows]

    def place(self, x, lo: int, block) -> None:
        """Write store rows [lo, lo + len(block)) into the matrix `x`."""
        hi = lo + len(block)
        if self.position is None:
            x[lo:hi] = block
        else:
            x[self.position[lo:hi]] = block

    def gather(self, x, lo: int, hi: int):
        """Store rows [lo, hi) of the matrix `x`, in store order."""
        return x[lo:hi] if self.position is None else x[self.position[lo:hi]]


def _contiguous(rows: np.ndarray) -> bool:
    return len(rows) == 0 or int(rows[-1] - rows[0]) + 1 == len(rows)


def _span(rows: np.ndarray) -> slice:
    return slice(0, 0) if len(rows) == 0 else slice(int(rows[0]), int(rows[-1]) + 1)


def allocate(rows: int, dim: int, memmap_dir: str | Path | None = None) -> np.ndarray:
    """An uninitialised (rows, dim) fp16 matrix: in RAM, or in `memmap_dir` as a memory-mapped scratch file that
    is unlinked at once (the mapping keeps it alive; nothing remains after the process)."""
    if memmap_dir is None:
        return np.empty((rows, dim), dtype=DTYPE)
    Path(memmap_dir).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".features.", suffix=".scratch", dir=memmap_dir)
    try:
        os.close(fd)
        return np.memmap(name, dtype=DTYPE, mode="w+", shape=(rows, dim))
    finally:
        os.unlink(name)


def fill(blocks, layout: Layout, memmap_dir: str | Path | None = None) -> np.ndarray:
    """The matrix made from (store row, (rows, D) float block) pairs, e.g. the embedding pass's: allocated once
    at the first block (which gives D), each block rounded to fp16 and written to its place in the layout."""
    x = None
    for lo, z in blocks:
        z = z.numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        if x is None:
            x = allocate(layout.rows, z.shape[1], memmap_dir)
        layout.place(x, lo, z.astype(DTYPE))
    if x is None:
        raise CompressError("no feature rows were produced: the image store is empty")
    return x


def float_block(x, lo: int, hi: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows [lo, hi) of `x` (numpy or torch, any float dtype) as a fresh float32 tensor on `device` (the caller's
    array is never aliased, so it may be changed in place). On a GPU the fp16 rows travel before they widen."""
    device = torch.device(device)
    block = x[lo:hi]
    if isinstance(block, torch.Tensor):
        return block.detach().to(device, torch.float32, copy=True)
    if device.type == "cpu":
        return torch.from_numpy(np.array(block, dtype=np.float32))
    return torch.from_numpy(np.array(block)).to(device).float()


def unit_block(x, lo: int, hi: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows [lo, hi) of `x` as l2-normalised float32 on `device` (see float_block)."""
    t = float_block(x, lo, hi, device)
    return t.div_(t.norm(dim=1, keepdim=True).clamp_min_(1e-12))


def unit_rows(x, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """The given rows of `x` (a few: a batch, grid queries), l2-normalised float32 on `device`."""
    rows = np.asarray(rows, dtype=np.int64)
    block = x[torch.from_numpy(rows)] if isinstance(x, torch.Tensor) else x[rows]
    return unit_block(block, 0, len(rows), device)


# ---------------------------------------------------------------- the stored copy, in store order

def _io_rows(dim: int) -> int:
    return max(1, IO_ROWS_BYTES // (2 * max(1, dim)))


def save(path: str | Path, x: np.ndarray, layout: Layout) -> None:
    """Write the matrix to `path` as an fp16 .npy in store order, block by block (atomically)."""
    n, dim = layout.rows, x.shape[1]

    def write(f) -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(DTYPE)),
                                                 "fortran_order": False, "shape": (n, dim)})
        for lo in range(0, n, _io_rows(dim)):
            f.write(np.ascontiguousarray(layout.gather(x, lo, min(lo + _io_rows(dim), n)), dtype=DTYPE).tobytes())
    write_atomic(path, write)


def load(path: str | Path, layout: Layout, memmap_dir: str | Path | None = None) -> np.ndarray | None:
    """The stored copy at `path` in the matrix layout, read block by block (no second copy), or None when the
    file is not an fp16 (rows, D) matrix. Memory-mapped and in store order already: the file itself, read-only."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(f)
        if dtype != np.dtype(DTYPE) or fortran or len(shape) != 2 or shape[0] != layout.rows:
            return None
        if memmap_dir is not None and layout.position is None:
            return np.load(path, mmap_mode="r")
        x = allocate(shape[0], shape[1], memmap_dir)
        step = _io_rows(shape[1])
        buf = np.empty((step, shape[1]), dtype=DTYPE)
        for lo in range(0, shape[0], step):
            rows = buf[:min(step, shape[0] - lo)]
            if f.readinto(memoryview(rows).cast("B")) != rows.nbytes:
                return None
            layout.place(x, lo, rows)
    return x
