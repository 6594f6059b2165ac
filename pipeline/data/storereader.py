"""One open handle on a store's images.h5 per reading thread, returning whole blocks checked against their sha256.

A block (`block_rows` consecutive rows, one HDF5 chunk) is read straight from its byte offset with os.preadv
when the images are stored plainly (uncompressed chunks of one block, or one contiguous array): no HDF5 call,
no file lock, and both the read and the sha256 release the GIL, so a loader thread overlaps them with the
training step. Any other layout falls back to h5py on a handle opened once, read-only, with file locking off.
Either way no caller sees a byte of a block before it matched the checksum `prepare` recorded.
"""
from __future__ import annotations

import os

import h5py
import numpy as np

from pipeline.runtime.atomic import io_error


def _block_offsets(d: h5py.Dataset, rows: int, n: int) -> np.ndarray | None:
    """Byte offset of each block in the file, or None when the layout is not one we can read directly."""
    try:
        if d.dtype != np.uint8 or d.id.get_create_plist().get_nfilters() != 0:
            return None
        blocks = -(-n // rows)
        row_bytes = int(np.prod(d.shape[1:]))
        if d.chunks is None:  # contiguous: one array at one offset
            start = d.id.get_offset()
            return None if start is None else start + np.arange(blocks, dtype=np.int64) * rows * row_bytes
        if tuple(d.chunks) != (rows,) + tuple(d.shape[1:]):
            return None
        offsets = np.full(blocks, -1, dtype=np.int64)

        def note(info):
            if info.size == rows * row_bytes and info.byte_offset is not None:
                offsets[info.chunk_offset[0] // rows] = info.byte_offset

        d.id.chunk_iter(note)  # one pass over the chunk index (per-chunk look-ups grow with N)
        return None if (offsets < 0).any() else offsets
    except (AttributeError, KeyError, ValueError, RuntimeError, OSError):  # older HDF5/h5py: the h5py path
        return None


class StoreReader:
    """Reads [first, last] blocks of `store` into a caller's buffer and checks each. One per thread."""

    def __init__(self, store):
        self.store, self.path = store, store.root / "images.h5"
        self.rows, self.n = store.block_rows, store.n
        self.row_bytes = int(np.prod(store.shape[1:]))
        self._fd = None
        try:
            self._h5 = h5py.File(self.path, "r", locking=False, rdcc_nbytes=64 << 20)
            self.offsets = _block_offsets(self._h5["images"], self.rows, self.n)
            if self.offsets is not None:
                self._fd = os.open(self.path, os.O_RDONLY)
                self._h5.close()
                self._h5 = None
        except OSError as e:
            raise io_error(self.path, e, "read") from None

    @property
    def direct(self) -> bool:
        """True when blocks are read by byte offset (the fast path), False through h5py."""
        return self._fd is not None

    def read_blocks(self, first: int, last: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of blocks first..last (inclusive) as uint8 (rows, H, W, C), each block checked; into `out`
        (C-contiguous, exactly that many rows) when given."""
        lo, hi = first * self.rows, min((last + 1) * self.rows, self.n)
        if out is None:
            out = np.empty((hi - lo,) + tuple(self.store.shape[1:]), dtype=np.uint8)
        if len(out) != hi - lo or not out.flags.c_contiguous:
            raise ValueError(f"buffer of {len(out)} rows for blocks {first}..{last} ({hi - lo} rows)")
        try:
            if self._fd is None:
                self._h5["images"].read_direct(out, np.s_[lo:hi])
            else:
                self._pread(first, last, out)
        except OSError as e:
            raise io_error(self.path, e, "read") from None
        for k in range(first, last + 1):
            self.store._check_block(k, out[(k - first) * self.rows:(k - first + 1) * self.rows])
        return out

    def _pread(self, first: int, last: int, out: np.ndarray) -> None:
        flat = memoryview(out).cast("B")
        block = self.rows * self.row_bytes
        k = first
        while k <= last:  # one read per run of blocks that lie back to back in the file
            j = k
            while j < last and self.offsets[j + 1] == self.offsets[j] + block:
                j += 1
            start = (k - first) * block
            stop = (min((j + 1) * self.rows, self.n) - first * self.rows) * self.row_bytes
            done = 0
            while start + done < stop:
                got = os.preadv(self._fd, [flat[start + done:stop]], int(self.offsets[k]) + done)
                if got == 0:
                    raise self.store._damaged(f"images.h5 ends inside block {k} (truncated)")
                done += got
            k = j + 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
