"""Is the in-RAM loader bound by random-row access? Its gather against a sequential copy of the same bytes.

`scale_loader.py`'s `loader_ram_over_memcpy` compares the loader's in-RAM batches with a sequential copy from
memory. A batch is 256 rows drawn at random from the in-RAM copy, so the loader cannot copy sequentially. This
script separates the access pattern from the loader's own costs: from a 512 MiB array of 64 px and of 256 px
rows it times, on the main thread, the loader's gather (`_gather`, np.take) of 256 random rows, the same rows
sorted, the random rows split over two threads, and a sequential copy of 256 consecutive rows, each pass over
every row several times, rounds alternated, medians.

    .venv/bin/python benchmarks/gather_pattern.py           # ~1 minute; run it alone
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
from benchmarks.gather_threads import random_rows  # noqa: E402
from pipeline.data.loader import _gather  # noqa: E402
from pipeline.runtime.provenance import provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gather_pattern.json"
BATCH = 256


def _pass(kind: str, rows: np.ndarray, batches: list[np.ndarray], out: np.ndarray, pool, repeats: int) -> float:
    """Bytes/s of `repeats` passes over every batch in the given pattern."""
    row = rows.shape[1]
    flat = rows.reshape(-1)
    t, done = time.perf_counter(), 0
    for _ in range(repeats):
        for k, which in enumerate(batches):
            if kind == "random":
                _gather(rows, which, out)
            elif kind == "sorted":
                _gather(rows, np.sort(which), out)
            elif kind == "random_two_threads":
                half = pool.submit(_gather, rows, which[:BATCH // 2], out[:BATCH // 2])
                _gather(rows, which[BATCH // 2:], out[BATCH // 2:])
                half.result()
            else:  # sequential: the k-th 256 consecutive rows, one contiguous copy
                np.copyto(out.reshape(-1), flat[k * BATCH * row:(k + 1) * BATCH * row])
            done += BATCH * row
    return done / (time.perf_counter() - t)


def measure(px: int, rounds: int, repeats: int, mib: int) -> dict:
    rows, batches = random_rows(px, mib)
    n, row = rows.shape
    out = np.empty((BATCH, row), np.uint8)
    kinds = ("sequential", "random", "sorted", "random_two_threads")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    with ThreadPoolExecutor(1) as pool:
        _pass("random", rows, batches, out, pool, 1)  # warm-up: pages touched, pool started
        for _ in range(rounds):
            for kind in kinds:
                rates[kind].append(_pass(kind, rows, batches, out, pool, repeats))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"px": px, "rows": n, "row_bytes": row, "batch": BATCH,
            "bytes_per_s": {k: {"median": med[k], "rounds": v} for k, v in rates.items()},
            "random_over_sequential": med["random"] / med["sequential"],
            "sorted_over_random": med["sorted"] / med["random"],
            "two_threads_over_one": med["random_two_threads"] / med["random"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=4, help="passes over every row per timed round")
    p.add_argument("--mib", type=int, default=512, help="size of the in-RAM array")
    a = p.parse_args()
    if min(a.rounds, a.repeats) < 1:
        p.error(f"--rounds {a.rounds} and --repeats {a.repeats} must be at least 1")
    if (a.mib << 20) < BATCH * 256 * 256 * 3:  # a whole batch of the largest rows, 48 MiB
        p.error(f"--mib {a.mib} is smaller than one batch of 256 px rows (48 MiB); use --mib 64 or more")
    result = {f"{px}px": measure(px, a.rounds, a.repeats, a.mib) for px in (64, 256)}
    result["summary"] = {k: {m: round(v[m], 3) for m in ("random_over_sequential", "sorted_over_random",
                                                          "two_threads_over_one")} for k, v in result.items()}
    result["provenance"] = provenance(vars(a))
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
