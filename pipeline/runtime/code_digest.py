"""A digest of the code that computes the pipeline's artifacts: every .py file of `pipeline/`, `stages/` and
`cache/`, by relative path and content.

A run folder and a teacher cache record it beside their settings, so resuming one after the code changed is a
change of identity like any changed setting: refused, or started over when asked (`train --restart if-changed`,
`extract --rebuild-if-changed`, which dvc.yaml passes). DVC re-runs a stage when these folders change; the
digest makes the stage start over instead of resuming, or reusing, what other code made.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # pipeline/runtime/ -> the repository
PACKAGES = ("pipeline", "stages", "cache")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            h.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
