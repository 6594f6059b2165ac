"""Scale, where the paged loader's time goes: the loader against its parts, each from a cold page cache.

`scale_loader.py` finds the paged loader below its goal (0.8 of a cold sequential read) on this 2-core machine.
This splits the cost. Over the same synthetic 64 px store (3.7 GB, built by `scale_loader.py` and reused), each
pass reads the whole file once, after evicting it from the page cache; rounds alternate the passes. Reported per
pass: bytes/s, its ratio to the sequential read of the same round, and the CPU it used (process user + system
seconds over wall seconds, so 2.0 is both cores):

    sequential        a plain sequential read, 16 MiB at a time (the goal's baseline)
    pages             the store's blocks in shuffled 16 MiB pages, read by 4 threads, nothing checked
    pages_sha256      the same, each block checked against its sha256 as the loader's readers do
    loader_unchecked  the paged loader with its per-block check replaced by nothing (here only)
    loader            the paged loader as shipped

    .venv/bin/python benchmarks/scale_loader_cost.py --rounds 3   # ~1.5 min on a quiet machine, once the 64 px
                                                                  # store exists (else it is built: 3.7 GB)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_loader import build, evict, loader_pass, raw_read  # noqa: E402
from pipeline.data.loader import BatchLoader  # noqa: E402
from pipeline.runtime.provenance import provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scale_loader_cost.json"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(f) -> dict:
    """bytes/s and cores used by f(), which returns the bytes it read."""
    c, t = _cpu(), time.perf_counter()
    nbytes = f()
    wall = time.perf_counter() - t
    return {"bytes_per_s": nbytes / wall, "cores": (_cpu() - c) / wall}


def pages_pass(store, check: bool, threads: int = 4, page_bytes: int = 16 << 20) -> int:
    """Every block of the store, in whole blocks grouped into ~16 MiB pages visited in a shuffled order, read by
    `threads` threads by byte offset (each thread its own reader, as the loader's); with `check`, through the
    reader's checked read (each block's sha256 against the store's), else by its unchecked read (here only)."""
    if not store.reader().direct:
        raise SystemExit("this store's blocks cannot be read by byte offset; rebuild it with scale_loader.py")
    rows, n = store.block_rows, store.n
    per_page = max(1, page_bytes // (rows * int(np.prod(store.shape[1:]))))
    blocks = -(-n // rows)
    pages = [(b, min(b + per_page, blocks) - 1) for b in range(0, blocks, per_page)]

    def one(page):
        first, last = page
        buf = np.empty((min((last + 1) * rows, n) - first * rows,) + tuple(store.shape[1:]), np.uint8)
        reader = store.reader()
        if check:
            reader.read_blocks(first, last, out=buf)
        else:
            reader._pread(first, last, buf)
        return buf.nbytes

    order = np.random.default_rng(0).permutation(len(pages))
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, [pages[i] for i in order]))


def measure(store, rounds: int) -> dict:
    path = store.root / "images.h5"
    row_bytes = int(np.prod(store.shape[1:]))

    def loader(checked: bool):
        paged = BatchLoader(store, np.arange(store.n), 256, seed=0, memory_limit=store.n * row_bytes // 2,
                            pin_memory=False)
        assert not paged.in_memory
        if not checked:
            store._check_block = lambda k, block: None  # this benchmark only: the cost of the check, by absence
        try:
            return loader_pass(paged)[0]
        finally:
            store.__dict__.pop("_check_block", None)

    passes = {"sequential": lambda: raw_read(path)[0], "pages": lambda: pages_pass(store, False),
              "pages_sha256": lambda: pages_pass(store, True), "loader_unchecked": lambda: loader(False),
              "loader": lambda: loader(True)}
    runs: dict[str, list[dict]] = {k: [] for k in passes}
    for _ in range(rounds):
        for name, f in passes.items():
            evict(path)
            runs[name].append(timed(f))
            print(f"{name:17s} {runs[name][-1]['bytes_per_s'] / 1e9:5.2f} GB/s  "
                  f"{runs[name][-1]['cores']:4.2f} cores", flush=True)
    out = {}
    for name, rs in runs.items():
        ratios = [r["bytes_per_s"] / s["bytes_per_s"] for r, s in zip(rs, runs["sequential"])]
        out[name] = {"bytes_per_s": statistics.median(r["bytes_per_s"] for r in rs),
                     "cores": statistics.median(r["cores"] for r in rs),
                     "over_sequential": statistics.median(ratios), "over_sequential_range": [min(ratios), max(ratios)],
                     "rounds": rs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("artifacts/scale/loader"), help="synthetic stores (reused)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error(f"--rounds {a.rounds}: give 1 or more rounds")
    store = build(a.work / "store64_300000", 300_000, 64)
    load = os.getloadavg()
    result = {"store": {"n": store.n, "px": store.shape[1], "bytes": (store.root / "images.h5").stat().st_size,
                        "block_rows": store.block_rows},
              "loadavg_before": load, "passes": measure(store, a.rounds), "loadavg_after": os.getloadavg(),
              "command": ".venv/bin/python benchmarks/scale_loader_cost.py" + "".join(f" {x}" for x in sys.argv[1:]),
              "provenance": provenance({k: str(v) for k, v in vars(a).items()})}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {m: v[m] for m in ("over_sequential", "cores")} for k, v in result["passes"].items()},
                     indent=1), "->", RESULTS)


if __name__ == "__main__":
    main()
