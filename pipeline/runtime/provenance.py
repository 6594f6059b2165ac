"""What produced an artifact: git SHA, arguments, package versions, machine, time. Logged with every run."""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]  # pipeline/runtime/ -> the repository
# Committed outputs of the pipeline: `dvc repro` rewrites them while it runs, so they say nothing about the code.
_OUTPUTS = ("dvc.lock", "metrics", "reports", "figures")


def git_sha() -> str:
    """The commit of the code that runs, with '+dirty' when the tree has changes other than the pipeline's own
    outputs; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in _OUTPUTS)], cwd=_REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def versions() -> dict:
    import numpy
    import torch
    import torchvision
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses to unpickle
    out = {"python": platform.python_version(), "torch": str(torch.__version__),
           "torchvision": str(torchvision.__version__), "numpy": str(numpy.__version__)}
    try:
        import zarr
        out["zarr"] = str(zarr.__version__)
    except ImportError:  # pragma: no cover - zarr is a hard dependency
        pass
    return out


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> dict:
    """The CPU model, the CPUs this process may use, and the OS. Worth recording: the same code and seed train to
    other weights on another CPU model (its kernels round differently; docs/fmnist.md)."""
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model here; platform.processor() gives only the architecture there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": usable_cpus(), "system": platform.platform()}


def provenance(arguments: dict | None = None) -> dict:
    """A record to store beside (or inside) every artifact."""
    return {
        "git_sha": git_sha(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in (arguments or {}).items()},
        "versions": versions(),
        "machine": machine(),
    }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
