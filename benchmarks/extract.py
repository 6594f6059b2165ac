"""Benchmark of stage `extract`: is the teacher forward the only cost?

Measures, in one run, alternating A B, B A, ... on the same data and the same shards/batches:
  forward   the teacher's forward + l2-normalise on images already rendered in RAM (the bound)
  embed     embed_blocks: read from the image store + render crops + forward (no writing)
  extract   the whole stage: the above + fp16 conversion, whole-shard Zarr writes, read-back verification,
            checksums, finalize (teacher loading included)
and reports summary.extract_vs_forward = extraction-loop img/s / forward img/s, median over the A/B pairs
(goal >= 0.9; extract_call_vs_forward also counts teacher loading and store creation). Also: write GB/s and
load-to-RAM time of the cache code on synthetic unit vectors, and peak RSS of a child `extract` process at
N and 4N images (it must stay flat: extraction holds one shard at a time).

    .venv/bin/python benchmarks/extract.py [--n 1024] [--size 16] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cache.layout import CacheSpec  # noqa: E402
from cache.load import load_embeddings  # noqa: E402
from cache.store import open_or_create  # noqa: E402
from cache.writer import CacheWriter  # noqa: E402
from pipeline.augment import center_crops, render  # noqa: E402
from pipeline.embed import embed_blocks  # noqa: E402
from pipeline.imagestore import ImageStore, write_image_store  # noqa: E402
from pipeline.modelfile import default_preprocessing, save_model  # noqa: E402
from pipeline.models import build_backbone  # noqa: E402
from pipeline.teachers import load_teacher  # noqa: E402
from stages.extract import ExtractConfig, extract  # noqa: E402


def make_data(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    write_image_store(root / f"data{n}", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.zeros(n),
                      np.zeros(n), [f"x{i}" for i in range(n)], dataset="random", classes=["a"], source="bench")
    return root / f"data{n}"


@torch.no_grad()
def forward_only(teacher, batches) -> float:
    t = time.perf_counter()
    for x in batches:
        F.normalize(teacher(x).float(), dim=1)
    return time.perf_counter() - t


def embed_only(teacher, store, prep, shard_rows, batch) -> float:
    t = time.perf_counter()
    for lo in range(0, store.n, shard_rows):
        for _ in embed_blocks(teacher, store, prep, lo, min(lo + shard_rows, store.n), batch, torch.device("cpu")):
            pass
    return time.perf_counter() - t


def peak_rss_mb(data: Path, weights: Path, out: Path, shard_rows: int, batch: int) -> float:
    """Peak RSS of one child `compress-cache extract` process (os.wait4 gives that child's own rusage)."""
    cmd = [sys.executable, "-m", "pipeline", "extract", "--data", str(data), "--weights", str(weights), "--out",
           str(out), "--shard-rows", str(shard_rows), "--batch-size", str(batch), "--device", "cpu",
           "--no-progress"]
    p = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    assert status == 0, f"{cmd} failed"
    return usage.ru_maxrss / 1024  # KiB on Linux


def store_io(root: Path, rows: int, dim: int) -> dict:
    """Write and load-to-RAM speed of the cache code alone, on synthetic unit vectors (fp16)."""
    x = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    spec = CacheSpec(n=rows, dim=dim, data_fingerprint="bench", teacher={"arch": "none"})
    path = root / "io.zarr"
    open_or_create(path, spec)
    w = CacheWriter(path)
    t = time.perf_counter()
    for k in range(spec.num_shards):
        lo, hi = w.rows(k)
        w.write_shard(k, x[lo:hi])  # includes read-back verification and both checksums
    w.finalize()
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    z, _ = load_embeddings(path)  # includes checksum, finiteness and norm checks of every shard
    load_s = time.perf_counter() - t
    assert z.shape == (rows, dim)
    gb = x.nbytes / 1e9
    return {"rows": rows, "dim": dim, "bytes": x.nbytes, "shards": spec.num_shards, "write_s": write_s,
            "write_gb_s": gb / write_s, "load_to_ram_s": load_s, "load_gb_s": gb / load_s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024, help="images (the RSS check also runs 4N)")
    ap.add_argument("--size", type=int, default=16, help="image side and teacher input size")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shard-rows", type=int, default=256)
    ap.add_argument("--io-rows", type=int, default=65536)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "extract.json")
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        data = make_data(root, a.n, a.size)
        weights = root / "t.pt"
        save_model(weights, build_backbone("resnet18", small_input=True, seed=0), default_preprocessing(a.size))
        teacher, identity = load_teacher(weights)
        prep, store = identity["preprocessing"], ImageStore(data)
        images = torch.from_numpy(store.read())
        batches = []  # rendered once, outside the timing: the forward-only bound sees the same batches
        for lo in range(0, a.n, a.shard_rows):
            for b in range(lo, min(lo + a.shard_rows, a.n), a.batch_size):
                hi = min(b + a.batch_size, lo + a.shard_rows, a.n)
                batches.append(render(images[b:hi], center_crops(hi - b, prep["crop_fraction"]),
                                      prep["input_size"], prep["mean"], prep["std"]))
        forward_only(teacher, batches[:2])  # warm-up
        runs = []
        for r in range(a.repeats):
            out = root / f"run{r}.zarr"

            def run_extract():
                t = time.perf_counter()
                done = extract(ExtractConfig(data=data, weights=weights, out=out, batch_size=a.batch_size,
                                             shard_rows=a.shard_rows, device="cpu", progress=False))
                return time.perf_counter() - t, done

            # A B then B A: a load change on the shared machine hits both sides of the ratio alike.
            if r % 2 == 0:
                f = forward_only(teacher, batches)
                e = embed_only(teacher, store, prep, a.shard_rows, a.batch_size)
                x, done = run_extract()
            else:
                x, done = run_extract()
                e = embed_only(teacher, store, prep, a.shard_rows, a.batch_size)
                f = forward_only(teacher, batches)
            shutil.rmtree(out)
            loop = done["seconds"]  # the shard loop + finalize, without teacher loading and store creation
            runs.append({"forward_s": f, "embed_s": e, "extract_s": x, "extract_loop_s": loop,
                         "extract_vs_forward": f / x, "extract_loop_vs_forward": f / loop,
                         "embed_vs_forward": f / e})
            print(f"run {r}: forward {a.n / f:7.0f} img/s  embed {a.n / e:7.0f} img/s  extract {a.n / x:7.0f} img/s"
                  f"  extract/forward {f / x:.3f} (loop only {f / loop:.3f})")
        io = store_io(root, a.io_rows, 512)
        print(f"store: write {io['write_gb_s']:.3f} GB/s, load-to-RAM {io['load_to_ram_s']:.3f} s "
              f"({io['load_gb_s']:.3f} GB/s) for {io['bytes'] / 1e6:.0f} MB")
        data4 = make_data(root, 4 * a.n, a.size)
        rss = {"N": peak_rss_mb(data, weights, root / "rss1.zarr", a.shard_rows, a.batch_size),
               "4N": peak_rss_mb(data4, weights, root / "rss4.zarr", a.shard_rows, a.batch_size)}
        print(f"peak RSS of extract: N={a.n} {rss['N']:.0f} MB, 4N={4 * a.n} {rss['4N']:.0f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # Headline: the extraction loop (read, render, forward, fp16, whole-shard writes, read-back verification,
    # checksums, finalize) against the forward alone; the per-call figure adds teacher loading and store setup.
    ratios = [r["extract_loop_vs_forward"] for r in runs]
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    summary = {
        "extract_vs_forward": statistics.median(ratios), "extract_vs_forward_min": min(ratios),
        "extract_vs_forward_max": max(ratios), "goal": 0.9,
        "extract_call_vs_forward": med("extract_vs_forward"),
        "forward_img_s": a.n / med("forward_s"), "embed_img_s": a.n / med("embed_s"),
        "extract_img_s": a.n / med("extract_s"),
        "write_gb_s": io["write_gb_s"], "load_to_ram_s": io["load_to_ram_s"], "load_gb_s": io["load_gb_s"],
        "peak_rss_mb_N": rss["N"], "peak_rss_mb_4N": rss["4N"], "rss_4N_over_N": rss["4N"] / rss["N"],
    }
    result = {"command": " ".join([".venv/bin/python", "benchmarks/extract.py"] + sys.argv[1:]),
              "config": {"n": a.n, "size": a.size, "teacher": "resnet18 small_input (random weights)",
                         "batch_size": a.batch_size, "shard_rows": a.shard_rows, "dtype": "float16",
                         "threads": torch.get_num_threads(), "device": "cpu", "repeats": a.repeats},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "runs": runs, "store_io": io, "peak_rss_mb": rss, "summary": summary}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
