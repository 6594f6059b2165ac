"""Reserve a file's disk space before HDF5 writes it.

h5py does not survive a full disk: a failed write surfaces in object destructors and the process segfaults,
leaving a partial file. So the space is claimed up front with `posix_fallocate` (which fails cleanly with
ENOSPC), and HDF5 writes into the claimed blocks through a file object that keeps its own end of file; the
file is cut to that length at the end. Writes past the reservation (an estimate that was too small) still
work while space remains.
"""
from __future__ import annotations

import os
from typing import BinaryIO


class ReservedFile:
    """A binary file for h5py's file-object driver: its logical end is what HDF5 wrote or truncated to, not
    the reserved (physical) size, so HDF5 sees a file of exactly its own making."""

    def __init__(self, f: BinaryIO, reserve: int):
        self.f, self.eof = f, 0
        if reserve > 0:
            os.posix_fallocate(f.fileno(), 0, reserve)  # OSError(ENOSPC) now, before HDF5 is involved

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.eof - self.f.tell())
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def write(self, b) -> int:
        written = self.f.write(b)
        self.eof = max(self.eof, self.f.tell())
        return written

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(self.eof + offset) if whence == os.SEEK_END else self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()

    def truncate(self, size: int | None = None) -> int:
        self.eof = self.f.tell() if size is None else size
        return self.eof

    def finish(self) -> None:
        """Cut the reservation to the bytes HDF5 wrote and put them on disk."""
        self.f.truncate(self.eof)
        self.f.flush()
        os.fsync(self.f.fileno())
