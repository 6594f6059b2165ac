"""Scale, part `cache`: do the processes of one node share one copy of the teacher cache? The node's memory used
by two gloo ranks, each loading the cache as `train` does, over that of one rank; goal <= 1.3.

A synthetic complete cache (4 M rows x 128-d fp16, 1 GB, written through cache.writer like `extract` writes
one; 200 k rows with --quick) is loaded by `stages.train._load_teacher_rows` in subprocesses on the CPU: one
process alone (world size 1: the rows under --cache-memory auto go into its RAM), then two gloo ranks of one node
(world size 2 on the CPU: local rank 0 builds the memory-mapped flat copy, the other waits and maps it). Each
process then reads every row once, as an epoch's batches do, waits for the others, and reports its RSS and PSS
(/proc/self/smaps_rollup: a page shared by k processes counts 1/k in each one's PSS), so the sum of the PSS is
the node's memory. The flat copy is removed before the two-rank run, so its build is part of it.

The ratio of totals counts each process's own memory too (~0.45 GB here: Python, torch, the stage's imports), so
it depends on the cache's size: 1 + (own memory) / (cache) at best. The size is chosen so that the cache is the
largest thing in the process, as at ImageNet scale (21-218 GB); `cache_growth_two_ranks_over_one`, what loading
added to the node's memory with two ranks over with one, is the same comparison without the processes' own
memory (1.0 when the copy is shared perfectly, 2.0 for a copy each).

Projections to 1.28 M and 13 M images (4 views, 2048-d and 128-d fp16): the cache's size, and the node's memory
with 8 ranks with one shared copy (8 x a rank's own memory + the cache, measured here) and with a copy each.

    python benchmarks/scale_cache.py [--work DIR] [--quick]   # ~3 minutes; into benchmarks/results/scale_cache.json
    python benchmarks/scale.py --parts cache                  # the same, into benchmarks/results/scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository, when run as a script
from cache.layout import CacheSpec  # noqa: E402
from cache.store import attributes, open_or_create, open_store  # noqa: E402
from cache.writer import CacheWriter  # noqa: E402

FINGERPRINT = "scale-cache-synthetic"
TEACHER = {"arch": "synthetic", "weights_sha256": "0" * 64, "preprocessing": {"input_size": 224}}

# One process: load as `train` does, read every row, wait for the others, report memory, wait again (so every
# process is alive, and its pages mapped, while each one measures).
_CHILD = """
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
import torch
from pipeline.runtime import distributed
from stages.train import _load_teacher_rows

def memory():
    kb = {}
    for line in open("/proc/self/smaps_rollup").readlines()[1:]:
        name, value = line.split(":")
        kb[name] = int(value.split()[0])
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {"rss_mb": kb["Rss"] / 1024, "pss_mb": kb["Pss"] / 1024, "pss_anon_mb": kb.get("Pss_Anon", 0) / 1024,
            "pss_file_mb": kb.get("Pss_File", 0) / 1024, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}

cache, fingerprint, out = sys.argv[1:4]
torch.set_num_threads(1)
world = distributed.init("cpu")
before = memory()
t = time.perf_counter()
cfg = SimpleNamespace(cache=Path(cache), cache_memory="auto", method="compress-2q")
rows, _, _ = _load_teacher_rows(cfg, SimpleNamespace(fingerprint=fingerprint), torch.device("cpu"), world)
load_s = time.perf_counter() - t
total = 0.0
for lo in range(0, len(rows), 1 << 16):  # every row once, as an epoch's batches read them
    total += float(rows[lo:lo + (1 << 16)].float().sum())
distributed.barrier()
after = memory()
distributed.barrier()
json.dump({"rank": world.rank, "world_size": world.world_size, "load_seconds": load_s, "before_load": before,
           **after, "rows_sum": total}, open(out, "w"))
distributed.cleanup()
"""


def synthetic_cache(path: Path, n: int, dim: int) -> Path:
    """A complete single-view fp16 cache of n unit rows (reused when one with this shape is there)."""
    spec = CacheSpec(n=n, dim=dim, data_fingerprint=FINGERPRINT, teacher=TEACHER)
    if path.exists():
        attrs = attributes(open_store(path))
        if attrs.get("complete") and (attrs.get("n"), attrs.get("dim")) == (n, dim):
            return path
        shutil.rmtree(path)
    open_or_create(path, spec)
    writer = CacheWriter(path)
    rng = np.random.default_rng(0)
    for k in range(writer.spec.num_shards):
        lo, hi = writer.rows(k)
        x = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        writer.write_shard(k, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    writer.finalize()
    return path


def _ranks(cache: Path, world_size: int, tmp: Path) -> list[dict]:
    """Run the child as `world_size` gloo ranks of one node; each one's report."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        if world_size > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        out = tmp / f"rank{world_size}-{rank}.json"
        procs.append((out, subprocess.Popen([sys.executable, "-c", _CHILD, str(cache), FINGERPRINT, str(out)],
                                            env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)))
    reports = []
    for out, p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"rank failed ({p.returncode}): {err[-2000:]}")
        reports.append(json.loads(out.read_text()))
    return reports


def _project(own_mb: float) -> dict:
    """Cache sizes at ImageNet scale and the node's memory with 8 ranks, from a rank's own memory measured here."""
    out = {}
    for label, n in (("1.28M", 1_281_167), ("13M", 13_000_000)):
        for dim in (2048, 128):
            gb = n * 4 * dim * 2 / 1e9  # 4 views, fp16
            out[f"{label}_4views_{dim}d"] = {
                "cache_gb": gb,
                "node_gb_8_ranks_one_shared_copy": 8 * own_mb / 1e3 + gb,
                "node_gb_8_ranks_a_copy_each": 8 * (own_mb / 1e3 + gb),
                # --cache-memory auto on an H200 (141 GB): rows on each GPU below a quarter of it, else host-mapped
                "h200_auto": "on each GPU" if gb <= 141 / 4 else "host, memory-mapped, shared by the node"}
    return out


def measure(work: Path, quick: bool = False, rows: int = 4_000_000, dim: int = 128) -> dict:
    """Build (or reuse) the synthetic cache under `work`, then measure one rank and two ranks loading it."""
    n = 200_000 if quick else rows
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cache = synthetic_cache(work / f"cache_{n}x{dim}.zarr", n, dim)
    build_s = time.perf_counter() - t
    cache_mb = n * dim * 2 / 2**20
    tmp = work / "reports"
    tmp.mkdir(exist_ok=True)
    load = os.getloadavg()
    one = _ranks(cache, 1, tmp)
    shutil.rmtree(Path(str(cache) + ".mmap"), ignore_errors=True)  # the two ranks build their node's copy
    two = _ranks(cache, 2, tmp)
    assert len({r["rows_sum"] for r in one + two}) == 1, "the ranks read different rows"
    one_pss, two_pss = one[0]["pss_mb"], sum(r["pss_mb"] for r in two)
    own_mb = (two_pss - cache_mb) / 2  # a rank's memory besides its share of the cache
    growth_one = one_pss - one[0]["before_load"]["pss_mb"]
    growth_two = two_pss - sum(r["before_load"]["pss_mb"] for r in two)
    return {
        "rows": n, "dim": dim, "dtype": "float16", "cache_mb": cache_mb, "cache_build_seconds": build_s,
        "one_rank": one[0], "two_ranks": two,
        "one_rank_pss_mb": one_pss, "two_ranks_pss_sum_mb": two_pss,
        "two_ranks_if_each_held_a_copy_mb": 2 * one_pss,
        "cache_rss_two_ranks_over_one": two_pss / one_pss,
        "load_growth_one_rank_mb": growth_one, "load_growth_two_ranks_mb": growth_two,
        "cache_growth_two_ranks_over_one": growth_two / growth_one,
        "rank_own_mb_besides_cache": own_mb,
        "projection": _project(own_mb),
        "loadavg_before": load, "loadavg_after": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("artifacts/scale/cache"), help="synthetic cache (reused)")
    ap.add_argument("--quick", action="store_true", help="200 k rows; into results/scale_cache_quick.json")
    a = ap.parse_args()
    from pipeline.runtime.provenance import provenance
    t = time.perf_counter()
    result = measure(a.work, a.quick)
    result["run"] = {**provenance({k: str(v) for k, v in vars(a).items()}), "quick": a.quick,
                     "seconds": time.perf_counter() - t,
                     "command": "python benchmarks/scale_cache.py" + (" --quick" if a.quick else "")}
    path = REPO / "benchmarks" / "results" / ("scale_cache_quick.json" if a.quick else "scale_cache.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("one_rank", "two_ranks")}, indent=2))


if __name__ == "__main__":
    main()
