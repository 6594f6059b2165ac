"""A `prepare` killed part-way, for the resume tests: run it as its own process and SIGKILL it once its spool
records `at` decoded items (prepare-spool.json's `done`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kill_prepare_at(args: list[str], out: Path, at: int, timeout_s: float = 120) -> int:
    """Start `compress-cache prepare ARGS --out OUT`, kill it after `at` items are spooled; returns `done`."""
    proc = subprocess.Popen([sys.executable, "-m", "stages", "prepare", *args, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta, deadline = out / "prepare-spool.json", time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            done = json.loads(meta.read_text())["done"]
        except (OSError, ValueError):
            done = 0
        if done >= at:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    return json.loads(meta.read_text())["done"]
