"""One writer per store: an exclusive `flock` on the sibling file `STORE.zarr.lock`.

The kernel drops a flock when its process dies, even by SIGKILL, so a killed extraction never leaves a stale
lock behind and the same command can resume at once. The lock file sits beside the store, not inside it, so
`--overwrite` can delete the store while holding it and DVC never sees it.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from cache.errors import CacheError


class StoreLock:
    def __init__(self, store: str | Path):
        self.path = Path(str(Path(store)).rstrip("/") + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CacheError(f"{self.path.parent / self.path.stem} is being written by {holder} "
                                 f"(lock {self.path}); wait for it to finish, or use another --out")
            # The previous holder may have unlinked the file between our open and flock: retry on the new one.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:  # no space for the holder's name (a full disk): the lock holds all the same
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
