"""Benchmark: NN search and k-means of the eval stage (faiss) against a straightforward torch / scikit-learn
implementation, on the same random unit features, alternating A B A B; writes benchmarks/results/eval.json.

    .venv/bin/python benchmarks/eval.py            # sizes: see --sizes; summary at the largest that ran

Projected ImageNet times (1.28 M x 2048 train, 50 k val, k-means 1000 clusters x 20 iterations) scale the
measured multiply-add rate of each implementation; both are O(N Q D) / O(N k D iters), so the rate carries.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from sklearn.cluster import KMeans

from pipeline.evaluation.cluster_assignment import kmeans
from pipeline.evaluation.knn import search

IMAGENET = {"train": 1_281_167, "val": 50_000, "dim": 2048, "clusters": 1000, "niter": 20}
K = 20


def torch_search(train: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1024):
    """The obvious version: a matrix product per query chunk, then topk."""
    a, ids = torch.from_numpy(train), []
    for lo in range(0, len(queries), chunk):
        ids.append((torch.from_numpy(queries[lo:lo + chunk]) @ a.T).topk(k, dim=1).indices)
    return torch.cat(ids).numpy()


def sklearn_kmeans(x: np.ndarray, k: int, niter: int, seed: int):
    return KMeans(k, init="random", n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd",
                  random_state=seed).fit(x).cluster_centers_


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def run_size(n: int, q: int, d: int, clusters: int, niter: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((n, d), dtype=np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    queries = rng.standard_normal((q, d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t = {"faiss_nn": [], "torch_nn": [], "faiss_kmeans": [], "sklearn_kmeans": []}
    for _ in range(repeats):  # A B A B: drift on a shared machine hits both sides
        dt, ids_f = timed(lambda: search(train, queries, K)[1])
        t["faiss_nn"].append(dt)
        dt, ids_t = timed(torch_search, train, queries, K)
        t["torch_nn"].append(dt)
        t["faiss_kmeans"].append(timed(kmeans, train, clusters, niter, 0)[0])
        t["sklearn_kmeans"].append(timed(sklearn_kmeans, train, clusters, niter, 0)[0])
    med = {name: statistics.median(v) for name, v in t.items()}
    nn_macs, km_macs = n * q * d, n * clusters * d * niter
    inet_nn = IMAGENET["train"] * IMAGENET["val"] * IMAGENET["dim"]
    inet_km = IMAGENET["train"] * IMAGENET["clusters"] * IMAGENET["dim"] * IMAGENET["niter"]
    row = {"train": n, "val": q, "dim": d, "k": K, "clusters": clusters, "niter": niter, "repeats": repeats,
           "times_s": t, "median_s": med,
           "nn_top1_agreement": float(np.mean(ids_f[:, 0] == ids_t[:, 0])),
           "nn_speedup": med["torch_nn"] / med["faiss_nn"],
           "nn_speedup_range": [min(t["torch_nn"]) / max(t["faiss_nn"]), max(t["torch_nn"]) / min(t["faiss_nn"])],
           "kmeans_speedup": med["sklearn_kmeans"] / med["faiss_kmeans"],
           "kmeans_speedup_range": [min(t["sklearn_kmeans"]) / max(t["faiss_kmeans"]),
                                    max(t["sklearn_kmeans"]) / min(t["faiss_kmeans"])],
           "gmac_per_s": {"faiss_nn": nn_macs / med["faiss_nn"] / 1e9, "torch_nn": nn_macs / med["torch_nn"] / 1e9,
                          "faiss_kmeans": km_macs / med["faiss_kmeans"] / 1e9,
                          "sklearn_kmeans": km_macs / med["sklearn_kmeans"] / 1e9}}
    row["projected_imagenet_s"] = {
        "faiss_nn": inet_nn / (row["gmac_per_s"]["faiss_nn"] * 1e9),
        "torch_nn": inet_nn / (row["gmac_per_s"]["torch_nn"] * 1e9),
        "faiss_kmeans": inet_km / (row["gmac_per_s"]["faiss_kmeans"] * 1e9),
        "sklearn_kmeans": inet_km / (row["gmac_per_s"]["sklearn_kmeans"] * 1e9)}
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000x1000,50000x5000", help="TRAINxVAL pairs, comma-separated")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "eval.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rows = []
    print(f"{'train':>8} {'val':>6} {'dim':>5}  {'faiss NN':>9} {'torch NN':>9} {'x':>5}  "
          f"{'faiss km':>9} {'sklearn km':>10} {'x':>5}")
    for size in args.sizes.split(","):
        n, q = (int(v) for v in size.split("x"))
        r = run_size(n, q, args.dim, args.clusters, args.niter, args.repeats)
        rows.append(r)
        m = r["median_s"]
        print(f"{n:>8} {q:>6} {args.dim:>5}  {m['faiss_nn']:>8.2f}s {m['torch_nn']:>8.2f}s {r['nn_speedup']:>5.2f}  "
              f"{m['faiss_kmeans']:>8.2f}s {m['sklearn_kmeans']:>9.2f}s {r['kmeans_speedup']:>5.2f}")
    top = rows[-1]
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/eval.py", *(argv or sys.argv[1:])]),
        "machine": {"threads": args.threads, "faiss": faiss.__version__, "torch": torch.__version__,
                    "faiss_gpus": faiss.get_num_gpus()},
        "baselines": {"nn": "torch: query-chunk (1024) matmul + topk, fp32",
                      "kmeans": "scikit-learn KMeans lloyd, init=random, n_init=1, tol=0, same iterations"},
        "rows": rows,
        "summary": {"at": {"train": top["train"], "val": top["val"], "dim": top["dim"], "clusters": top["clusters"]},
                    "nn_speedup": top["nn_speedup"], "nn_speedup_range": top["nn_speedup_range"],
                    "kmeans_speedup": top["kmeans_speedup"], "kmeans_speedup_range": top["kmeans_speedup_range"],
                    "imagenet": IMAGENET, "projected_imagenet_s": top["projected_imagenet_s"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"summary at {top['train']}x{top['dim']}: nn_speedup {top['nn_speedup']:.2f}, kmeans_speedup "
          f"{top['kmeans_speedup']:.2f}; projected ImageNet: faiss NN {top['projected_imagenet_s']['faiss_nn'] / 60:.1f}"
          f" min, faiss k-means {top['projected_imagenet_s']['faiss_kmeans'] / 60:.1f} min -> {args.out}")
    return result


if __name__ == "__main__":
    main()
