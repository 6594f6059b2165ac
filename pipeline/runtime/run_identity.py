"""What a training run is trained on, by content rather than by path: recorded in its config.json, checkpoint
and model file, and compared when it resumes.

    data      the image store's fingerprint
    teacher   a cached teacher: the cache's teacher weights sha256, the fingerprint of the data it was extracted
              from and a digest of its shard checksums (another extraction at the same path differs here);
              a live teacher: its weights' sha256; None for methods without a teacher

The same store or cache reached by another path (absolute, relative, a copy) has the same identity and resumes;
another teacher or other images at the same path do not. Computing it reads only manifests and the cache's
attributes; the shards are checked against those checksums when training loads them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.runtime.errors import CompressError


def run_identity(data_fingerprint: str, cache: Path | None = None, live_weights: Path | None = None) -> dict:
    """The identity of a run on the store `data_fingerprint` with the teacher cache `cache` (complete, made from
    that store, else CacheError) or the live teacher checkpoint `live_weights`."""
    teacher = None
    if cache is not None:
        from cache.load import open_complete
        _, attrs = open_complete(cache, expect_fingerprint=data_fingerprint)
        teacher = {"weights_sha256": attrs["teacher"]["weights_sha256"],
                   "data_fingerprint": attrs["data_fingerprint"],
                   "shards_sha256": hashlib.sha256(json.dumps(attrs["checksums"], sort_keys=True)
                                                   .encode()).hexdigest()}
    elif live_weights is not None:
        from pipeline.runtime.provenance import sha256_file
        if not Path(live_weights).is_file():
            raise CompressError(f"teacher checkpoint {str(live_weights)!r} does not exist or is not a file; "
                                f"check --teacher-weights")
        teacher = {"weights_sha256": sha256_file(live_weights)}
    return {"data": data_fingerprint, "teacher": teacher}


def describe(identity: dict | None) -> str:
    """'data 5ecffe85f7aa, teacher weights 3fa2c0e1d2b4 (cache of data 5ecffe85f7aa, shards 9a1b22c3d4e5)'."""
    if not identity:
        return "an unrecorded identity (written before runs recorded one)"
    out = f"data {str(identity.get('data'))[:12]}"
    t = identity.get("teacher")
    if t:
        out += f", teacher weights {t['weights_sha256'][:12]}"
        if "shards_sha256" in t:
            out += f" (cache of data {t['data_fingerprint'][:12]}, shards {t['shards_sha256'][:12]})"
    return out
