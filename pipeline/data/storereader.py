"""One open handle on a store's images.h5 per reading thread, returning whole blocks checked against their sha256.

A block (`block_rows` consecutive rows, one HDF5 chunk) is read straight from its byte offset with os.preadv
when the images are stored plainly (uncompressed chunks of one block, or one contiguous array): no HDF5 call,
no file lock, and both the read and the sha256 release the GIL, so a loader thread overlaps them with the
training step. Any other layout falls back to h5py on a handle opened once, read-only, with file locking off.
Either way no caller sees a byte of a block before it matched the checksum `prepare` recorded.

`uncached=True` reads past the page cache (O_DIRECT): the disk writes straight into the caller's buffer, so a
read costs no kernel copy and leaves the page cache to others (a memory-mapped teacher cache). Here a paged
epoch took 0.91-0.94 core-seconds per GB uncached against 1.37-1.44 buffered (medians of two runs of
benchmarks/scale_loader.py). O_DIRECT wants the file offset, the length and the
buffer's address aligned; stores `prepare` writes align their blocks to 4 KiB, and anything else (an older
store, a buffer that is not aligned, a partial last block) goes through an aligned bounce buffer and one copy.
A filesystem that refuses O_DIRECT (tmpfs on older kernels) gets buffered reads, as `io` then says.
"""
from __future__ import annotations

import errno
import os

import h5py
import numpy as np

from pipeline.runtime.atomic import io_error

ALIGN = 4096  # O_DIRECT's alignment: the logical block of any common device divides it
_BOUNCE = 16 << 20  # the aligned buffer unaligned uncached reads go through


def aligned_empty(shape: tuple) -> np.ndarray:
    """An uninitialised uint8 array whose first byte is ALIGN-aligned (numpy only promises 64 bytes), so
    uncached reads can land in it directly."""
    count = int(np.prod(shape))
    raw = np.empty(count + ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip:skip + count].reshape(shape)


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
        self._odirect: int | None = None  # the O_DIRECT handle, opened on the first uncached read
        self._odirect_refused = False  # this file's filesystem said no: buffered reads instead
        self._bounce: np.ndarray | None = None  # ALIGN-aligned, made on the first unaligned uncached read
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

    @property
    def io(self) -> str:
        """How the last reads went: "o_direct", "buffered" (by byte offset) or "h5py"."""
        return "h5py" if self._fd is None else "o_direct" if self._odirect is not None else "buffered"

    def read_blocks(self, first: int, last: int, out: np.ndarray | None = None, *,
                    uncached: bool = False) -> np.ndarray:
        """Rows of blocks first..last (inclusive) as uint8 (rows, H, W, C), each block checked; into `out`
        (C-contiguous, exactly that many rows) when given; past the page cache when `uncached` and the
        filesystem allows it."""
        lo, hi = first * self.rows, min((last + 1) * self.rows, self.n)
        if out is None:
            out = np.empty((hi - lo,) + tuple(self.store.shape[1:]), dtype=np.uint8)
        if len(out) != hi - lo or not out.flags.c_contiguous:
            raise ValueError(f"buffer of {len(out)} rows for blocks {first}..{last} ({hi - lo} rows)")
        try:
            if self._fd is None:
                self._h5["images"].read_direct(out, np.s_[lo:hi])
            else:
                self._pread(first, last, out, uncached)
        except OSError as e:
            raise io_error(self.path, e, "read") from None
        for k in range(first, last + 1):
            self.store._check_block(k, out[(k - first) * self.rows:(k - first + 1) * self.rows])
        return out

    def _pread(self, first: int, last: int, out: np.ndarray, uncached: bool) -> None:
        flat = memoryview(out).cast("B")
        fd = self._uncached_fd() if uncached else None
        block = self.rows * self.row_bytes
        k = first
        while k <= last:  # one read per run of blocks that lie back to back in the file
            j = k
            while j < last and self.offsets[j + 1] == self.offsets[j] + block:
                j += 1
            start = (k - first) * block
            stop = (min((j + 1) * self.rows, self.n) - first * self.rows) * self.row_bytes
            dest, offset = flat[start:stop], int(self.offsets[k])
            done = 0
            if fd is not None:
                try:
                    done = self._read_uncached(fd, dest, offset)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self._refuse_odirect()  # it opened, but wants another alignment: buffered from now on
                    fd = None
            while done < len(dest):  # buffered, or what an uncached read left (a short read mid-file)
                got = os.preadv(self._fd, [dest[done:]], offset + done)
                if got == 0:
                    raise self.store._damaged(f"images.h5 ends inside block {k} (truncated)")
                done += got
            k = j + 1

    def _uncached_fd(self) -> int | None:
        if self._odirect is None and not self._odirect_refused:
            try:
                self._odirect = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
            except (AttributeError, OSError):  # no O_DIRECT on this platform, or the filesystem refuses it
                self._odirect_refused = True
        return self._odirect

    def _refuse_odirect(self) -> None:
        if self._odirect is not None:
            os.close(self._odirect)
        self._odirect, self._odirect_refused = None, True

    def _read_uncached(self, fd: int, dest: memoryview, offset: int) -> int:
        """Bytes of `dest` read from `offset` by O_DIRECT reads: straight into `dest` when offset, length
        and address are aligned, else through the bounce buffer. Stops early (the caller reads the rest
        buffered) at a short read that leaves the file position unaligned."""
        address = np.frombuffer(dest, dtype=np.uint8).ctypes.data if len(dest) else 0
        if offset % ALIGN == 0 and address % ALIGN == 0 and len(dest) % ALIGN == 0:
            done = 0
            while done < len(dest):
                got = os.preadv(fd, [dest[done:]], offset + done)
                done += got
                if got == 0 or done % ALIGN:
                    break
            return done
        if self._bounce is None:
            self._bounce = aligned_empty((_BOUNCE,))
        bounce, target = self._bounce, np.frombuffer(dest, dtype=np.uint8)
        position, done = offset - offset % ALIGN, 0
        while done < len(dest):
            want = min(_BOUNCE, -(-(offset + len(dest) - position) // ALIGN) * ALIGN)
            got = os.preadv(fd, [bounce[:want]], position)
            skip = offset + done - position
            take = min(got - skip, len(dest) - done)
            if take <= 0:
                break
            np.copyto(target[done:done + take], bounce[skip:skip + take])  # releases the GIL, as the read does
            done, position = done + take, position + got
            if got % ALIGN:
                break
        return done

    def close(self) -> None:
        if self._odirect is not None:
            os.close(self._odirect)
            self._odirect = None
        self._bounce = None
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
