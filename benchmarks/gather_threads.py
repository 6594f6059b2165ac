"""Why the loader gathers with np.take: both gathers timed from a worker thread, alone and beside a busy process.

The loader builds batches in a background thread (pipeline/data/loader.py). torch.index_select called there
starts intra-op threads of its own; np.take copies on the calling thread. While training, the step's threads
keep the cores busy, so this script times both gathers of 256 random rows from a 512 MiB in-RAM array (64 px
and 256 px rows) from a worker thread, alone and beside a process that runs float32 matrix products on two
threads (a stand-in for the training step), rounds alternated, medians. It also times a thread ping-pong
(a queue round trip), the cost of handing a batch from the loader's thread to the consumer.

    .venv/bin/python benchmarks/gather_threads.py              # ~1 minute; run it alone
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
from pipeline.data.loader import _gather  # noqa: E402
from pipeline.runtime.provenance import provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gather_threads.json"


def _busy(stop) -> None:
    """The stand-in for a training step: matrix products on two intra-op threads until told to stop."""
    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def _index_select(rows: np.ndarray, which: np.ndarray, out: np.ndarray) -> None:
    """The loader's gather before: torch.index_select on the rows' flat view."""
    torch.index_select(torch.from_numpy(rows), 0, torch.from_numpy(which), out=torch.from_numpy(out))


def _in_thread(fn) -> float:
    """Seconds `fn` takes in a worker thread, as the loader's gather runs."""
    took = {}

    def run() -> None:
        t0 = time.perf_counter()
        fn()
        took["seconds"] = time.perf_counter() - t0

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return took["seconds"]


def random_rows(px: int, mib: int = 512) -> tuple[np.ndarray, list[np.ndarray]]:
    """An in-RAM copy of `mib` MiB of random px x px x 3 rows, (N, row bytes), and one epoch of 256-row batches
    drawn by a seeded permutation, as the loader draws them (benchmarks/gather_pattern.py uses them too)."""
    row = px * px * 3
    n = (mib << 20) // row
    rows = np.random.default_rng(0).integers(0, 256, (n, row), dtype=np.uint8)
    order = np.random.default_rng(1).permutation(n)
    return rows, [order[k:k + 256] for k in range(0, n - 255, 256)]


def gather_rates(px: int, rounds: int) -> dict:
    rows, batches = random_rows(px)
    n, row = rows.shape
    out = np.empty((256, row), dtype=np.uint8)
    nbytes = len(batches) * 256 * row
    rates: dict[str, list[float]] = {"np_take": [], "index_select": []}
    for fn in (_gather, _index_select):  # warm-up: out and the rows are touched once
        fn(rows, batches[0], out)
    for _ in range(rounds):
        for name, fn in (("np_take", _gather), ("index_select", _index_select)):
            seconds = _in_thread(lambda: [fn(rows, b, out) for b in batches])
            rates[name].append(nbytes / seconds)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"row_bytes": row, "rows": n, "batches": len(batches),
            "bytes_per_s": {k: {"median": med[k], "rounds": v} for k, v in rates.items()},
            "np_take_over_index_select": med["np_take"] / med["index_select"]}


def ping_pong_us(n: int = 3000, rounds: int = 3) -> list[float]:
    """Round trips of one item between two threads through queues, in microseconds (median of each round)."""
    there, back = queue.SimpleQueue(), queue.SimpleQueue()

    def echo():
        while (x := there.get()) is not None:
            back.put(x)

    t = threading.Thread(target=echo)
    t.start()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(n):
            there.put(i)
            back.get()
        out.append((time.perf_counter() - t0) / n * 1e6)
    there.put(None)
    t.join()
    return out


def measure(rounds: int) -> dict:
    result = {"loadavg_before": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    for condition in ("alone", "beside_busy_process"):
        stop, proc = None, None
        if condition != "alone":
            ctx = multiprocessing.get_context("spawn")
            stop = ctx.Event()
            proc = ctx.Process(target=_busy, args=(stop,), daemon=True)
            proc.start()
            time.sleep(2.0)  # the competitor is up and busy
        try:
            part = {f"{px}px": gather_rates(px, rounds) for px in (64, 256)}
            part["ping_pong_round_trip_us"] = ping_pong_us()
        finally:
            if proc is not None:
                stop.set()
                proc.join(10)
        result[condition] = part
        print(condition, {k: (round(v["np_take_over_index_select"], 2) if isinstance(v, dict) else
                              [round(x) for x in v]) for k, v in part.items()}, flush=True)
    result["summary"] = {
        f"np_take_over_index_select_{c}_{px}px": result[c][f"{px}px"]["np_take_over_index_select"]
        for c in ("alone", "beside_busy_process") for px in (64, 256)}
    result["loadavg_after"] = os.getloadavg()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds per gather and condition")
    ap.add_argument("--json", type=Path, default=RESULTS)
    a = ap.parse_args()
    result = measure(a.rounds)
    result["provenance"] = provenance(vars(a))
    result["command"] = " ".join([os.path.relpath(sys.executable), *sys.argv])
    text = json.dumps(result, indent=2, default=str)
    print(json.dumps(result["summary"], indent=2))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
