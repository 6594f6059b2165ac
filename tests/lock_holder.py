"""Another process holding a store's lock, for the tests of what a second writer meets."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def lock_held_by_another_process(path: Path):
    """Yields the holder (a Popen) once it holds StoreLock(path); kills it on the way out."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from cache.lock import StoreLock; "
         f"StoreLock({str(path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
