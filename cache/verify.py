"""`verify` re-reads every shard against its recorded checksum; `info` summarises a store without reading it."""
from __future__ import annotations

import json
from pathlib import Path

from cache.layout import CROPS, EMBEDDINGS, PROGRESS, checksum, shard_range
from cache.store import array, attributes, open_store, size_on_disk, spec_of


def _recorded(path: Path, attrs: dict) -> dict[int, dict]:
    """shard -> {array name: checksum}: from the attributes when complete, from progress markers otherwise."""
    if attrs.get("complete"):
        names = list(attrs["checksums"])
        return {k: {n: attrs["checksums"][n][k] for n in names} for k in range(attrs["num_shards"])}
    out = {}
    for marker in sorted((path / PROGRESS).glob("shard-*.json")):
        try:
            m = json.loads(marker.read_text())
            out[int(m["shard"])] = m["checksums"]
        except (json.JSONDecodeError, KeyError, ValueError):
            pass
    return out


def verify_store(path: str | Path) -> list[str]:
    """Every problem found, one line each, naming the shard and its rows; an empty list means sound."""
    path = Path(path)
    group = open_store(path)
    attrs = attributes(group)
    spec = spec_of(attrs)
    arrays = {EMBEDDINGS: array(group)}
    if spec.views > 1:
        arrays[CROPS] = array(group, CROPS)
    recorded = _recorded(path, attrs)
    problems = []
    if not attrs.get("complete"):
        problems.append(f"incomplete: {len(recorded)} of {spec.num_shards} shards written; re-run the same "
                        f"extract command to finish")
    for k, sums in sorted(recorded.items()):
        lo, hi = shard_range(k, spec.shard_rows, spec.n)
        for name, arr in arrays.items():
            try:
                ok = checksum(arr[lo:hi]) == sums.get(name)
                why = "checksum mismatch"
            except Exception as e:
                ok, why = False, f"unreadable ({type(e).__name__})"
            if not ok:
                problems.append(f"shard {k} ({name}, rows {lo}..{hi - 1}): {why}; re-extract with --overwrite")
    return problems


def info(path: str | Path) -> dict:
    """What `compress-cache info` prints: shape, dtype, teacher, data, completion and size."""
    path = Path(path)
    attrs = attributes(open_store(path))
    done = attrs["num_shards"] if attrs.get("complete") else len(_recorded(path, attrs))
    return {"path": str(path), "rows": attrs["n"], "dim": attrs["dim"], "views": attrs["views"],
            "dtype": attrs["dtype"], "shard_rows": attrs["shard_rows"], "chunk_rows": attrs["chunk_rows"],
            "shards_done": done, "shards_total": attrs["num_shards"], "complete": bool(attrs.get("complete")),
            "data_fingerprint": attrs["data_fingerprint"], "teacher": attrs["teacher"],
            "view_params": attrs["view_params"], "size_bytes": size_on_disk(path),
            "created": attrs.get("created"), "completed": attrs.get("completed"),
            "provenance": attrs.get("provenance", {})}

