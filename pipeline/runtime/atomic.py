"""Write a file so that a reader sees the old content or the whole new one, never a part of it.

The bytes go to a temporary name unique to this process (`.NAME.<pid>.tmp` in the same folder), are flushed to
disk, then renamed over NAME. Any failure (no space, a read-only folder, a folder where the file should be)
removes the temporary and raises one CompressError naming the path and the cause: nothing half-written is
left for a later run to trust, and two processes never write the same temporary.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pipeline.runtime.errors import CompressError

TEMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def is_temp(path: Path) -> bool:
    """A temporary of this module (any process): a hidden name ending in `.<pid>.tmp`."""
    parts = path.name.split(".")
    return path.name.startswith(".") and len(parts) >= 4 and parts[-1] == "tmp" and parts[-2].isdigit()


def cause(e: BaseException) -> str:
    """The operating system's words for an I/O failure ('No space left on device'), else the first line."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    return (str(e).splitlines() or [type(e).__name__])[0][:160]


def io_error(path: str | Path, e: BaseException, action: str = "write") -> CompressError:
    """One line for a failed write: the path, the cause, and what to do about it."""
    advice = {errno.ENOSPC: "free some space and re-run the same command",
              errno.EDQUOT: "free some space and re-run the same command",
              errno.EROFS: "choose a writable location",
              errno.EACCES: "check the folder's permissions or choose another location",
              errno.EISDIR: "a folder is in the way: choose another path or remove it",
              errno.ENOTDIR: "a file is where a folder should be: choose another path or remove it",
              errno.EEXIST: "a file is where a folder should be: choose another path or remove it"}
    code = e.errno if isinstance(e, OSError) else None
    return CompressError(f"cannot {action} {path}: {cause(e)}; "
                         f"{advice.get(code, 'fix the cause and re-run the same command')}")


class _Recording:
    """A binary file whose failed writes are remembered: torch.save reports a failed write as a RuntimeError
    without the errno, and the errno is what tells 'disk full' from anything else."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a fresh temporary, flush it to disk, rename it to `path`."""
    path = Path(path)
    tmp = temp_name(path)
    f = None
    try:
        with open(tmp, "xb") as raw:
            f = _Recording(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        _remove(tmp)
        raise io_error(path, f.error if f is not None and f.error is not None else e) from None
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def torch_save(path: str | Path, payload) -> None:
    import torch
    write_atomic(path, lambda f: torch.save(payload, f))


def make_dir(path: str | Path, what: str = "folder") -> Path:
    """mkdir -p, or one line when a file (or an unwritable place) is in the way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CompressError(f"{what} {path} is a file, not a folder; choose another path or remove it")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io_error(path, e, "create") from None
    return path


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporaries a killed writer left in `folder` (call only while holding the folder's lock)."""
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if p.is_file() and is_temp(p)] if folder.is_dir() else []
    for p in stale:
        _remove(p)
    return stale


def _remove(p: Path) -> None:
    try:
        p.unlink(missing_ok=True)
    except OSError:  # the folder itself became unwritable: nothing more to do, the error already says where
        pass
