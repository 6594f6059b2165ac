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

The teacher is a random-weight ResNet-18 with the small-input stem (default) or, with `--teacher NAME`, a
DINO / DINOv2 ViT of pipeline.models.vit (e.g. dino_vits16) saved in the release's key layout and read by `extract`
exactly as a user's file. `--block-seconds S` sizes N from a warm-up so each timed block (forward, embed,
extract) lasts about S seconds: short blocks make the ratio swing from run to run.

    .venv/bin/python benchmarks/extract.py [--n 1024] [--size 16] [--repeats 2]
    .venv/bin/python benchmarks/extract.py --teacher dino_vits16 --block-seconds 30 --no-rss
"""
from __future__ import annotations

import argparse
import json
import math
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

from cache.layout import CacheSpec
from cache.load import load_embeddings
from cache.store import open_or_create
from cache.writer import CacheWriter
from pipeline.evaluation.embed import embed_blocks
from pipeline.data.eval_view import eval_view, resize_side
from pipeline.data.imagestore import ImageStore, write_image_store
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
from pipeline.models.teachers import load_teacher
from pipeline.models.vit import owns as is_vit
from stages.extract import ExtractConfig, extract


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


def peak_rss_mb(data: Path, weights: Path, out: Path, shard_rows: int, batch: int, size: int) -> float:
    """Peak RSS of one child `compress-cache extract` process (os.wait4 gives that child's own rusage)."""
    cmd = [sys.executable, "-m", "stages", "extract", "--data", str(data), "--weights", str(weights), "--out",
           str(out), "--shard-rows", str(shard_rows), "--batch-size", str(batch), "--device", "cpu",
           "--input-size", str(size), "--no-progress"]
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
    ap.add_argument("--teacher", default="resnet18", help="resnet18 (small-input stem) or a pipeline.models.vit name")
    ap.add_argument("--size", type=int, default=None, help="teacher input size (default: 16; ViTs 224)")
    ap.add_argument("--block-seconds", type=float, default=0.0,
                    help="size N so the forward block lasts about this long (0: use --n)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS check at N and 4N images")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shard-rows", type=int, default=256)
    ap.add_argument("--io-rows", type=int, default=65536)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "extract.json")
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load_start = os.getloadavg()  # the machine may be shared: say how busy it was
    vit = is_vit(a.teacher)
    a.size = a.size or (224 if vit else 16)
    root = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        weights = root / "t.pt"
        if vit:  # the release's layout: pipeline.models.vit uses the official parameter names
            torch.save(build_backbone(a.teacher, seed=0).net.state_dict(), weights)
        else:
            save_model(weights, build_backbone(a.teacher, small_input=True, seed=0), default_preprocessing(a.size))
        teacher, identity = load_teacher(weights, input_size=a.size)
        prep = identity["preprocessing"]
        side = resize_side(prep)  # images stored at the resize side: the evaluation view only crops them
        forward_only(teacher, [torch.randn(a.batch_size, 3, a.size, a.size)])  # warm-up
        if a.block_seconds:
            t = forward_only(teacher, [torch.randn(a.batch_size, 3, a.size, a.size)])
            a.n = max(1, math.ceil(a.block_seconds * a.batch_size / t / a.shard_rows)) * a.shard_rows
            print(f"forward {a.batch_size / t:.1f} img/s in the warm-up: N = {a.n} for ~{a.block_seconds:.0f} s blocks")
        data = make_data(root, a.n, side)
        store = ImageStore(data)
        images = torch.from_numpy(store.read())
        batches = []  # rendered once, outside the timing: the forward-only bound sees the same batches
        for lo in range(0, a.n, a.shard_rows):
            for b in range(lo, min(lo + a.shard_rows, a.n), a.batch_size):
                hi = min(b + a.batch_size, lo + a.shard_rows, a.n)
                batches.append(eval_view(images[b:hi], prep))
        runs = []
        for r in range(a.repeats):
            out = root / f"run{r}.zarr"

            def run_extract():
                t = time.perf_counter()
                done = extract(ExtractConfig(data=data, weights=weights, out=out, batch_size=a.batch_size,
                                             shard_rows=a.shard_rows, device="cpu", progress=False,
                                             input_size=a.size))
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
        rss = {"N": None, "4N": None}
        if not a.no_rss:
            data4 = make_data(root, 4 * a.n, side)
            rss = {"N": peak_rss_mb(data, weights, root / "rss1.zarr", a.shard_rows, a.batch_size, a.size),
                   "4N": peak_rss_mb(data4, weights, root / "rss4.zarr", a.shard_rows, a.batch_size, a.size)}
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
        "peak_rss_mb_N": rss["N"], "peak_rss_mb_4N": rss["4N"],
        "rss_4N_over_N": rss["4N"] / rss["N"] if rss["N"] else None,
        "block_seconds_median": {k: med(k) for k in ("forward_s", "embed_s", "extract_loop_s")},
    }
    result = {"command": " ".join([".venv/bin/python", "benchmarks/extract.py"] + sys.argv[1:]),
              "config": {"n": a.n, "size": a.size, "image_side": side,
                         "teacher": (f"{a.teacher} ({identity['format']} layout, random weights)" if vit else
                                     f"{a.teacher} small_input (random weights)"),
                         "block_seconds": a.block_seconds,
                         "batch_size": a.batch_size, "shard_rows": a.shard_rows, "dtype": "float16",
                         "threads": torch.get_num_threads(), "device": "cpu", "repeats": a.repeats},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
              "runs": runs, "store_io": io, "peak_rss_mb": rss, "summary": summary}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
