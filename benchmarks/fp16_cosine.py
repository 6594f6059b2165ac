"""Measure what storing l2-normalised embeddings in float16 (the teacher cache's default) does to them; writes
benchmarks/results/fp16_cosine.json.

    .venv/bin/python benchmarks/fp16_cosine.py

For each width D and two kinds of unit vectors (Gaussian: signed entries; ReLU: non-negative, half of them
zero, like pooled ResNet features), N vectors x are normalised in float32, stored as float16 and read back as
float32 (h), exactly as cache/ does. Reported, as the largest over the N rows (and over N pairs):

- self_dot_error    |h . h - 1|     the "self-cosine" of a stored row: its squared norm is no longer 1
- cosine_error      1 - cos(h, x)   the direction lost by rounding
- dot_change        |h_i . h_j - x_i . x_j| for random pairs (i, j): how much a similarity the loss sees moves
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OUT = Path(__file__).resolve().parent / "results" / "fp16_cosine.json"


def measure(x: torch.Tensor, pairs: int, generator: torch.Generator) -> dict:
    x = F.normalize(x.double(), dim=1).float()
    h = x.half().float()
    hd, xd = h.double(), x.double()
    self_dot = ((hd * hd).sum(1) - 1).abs()
    cosine = 1 - F.cosine_similarity(hd, xd, dim=1)
    i = torch.randint(len(x), (pairs,), generator=generator)
    j = torch.randint(len(x), (pairs,), generator=generator)
    dot = ((hd[i] * hd[j]).sum(1) - (xd[i] * xd[j]).sum(1)).abs()
    return {"self_dot_error_max": float(self_dot.max()), "self_dot_error_p99": float(self_dot.quantile(0.99)),
            "self_dot_error_mean": float(self_dot.mean()), "cosine_error_max": float(cosine.max()),
            "dot_change_max": float(dot.max()), "dot_change_mean": float(dot.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048, 8192])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    a = parser.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    results = []
    for d in a.dims:
        rows = max(1, min(a.rows, 400_000_000 // (8 * d)))  # bound the float64 copies to ~400 MB
        gauss = torch.randn(rows, d, generator=g)
        for kind, x in (("gaussian", gauss), ("relu", gauss.clamp_min(0))):
            results.append({"dim": d, "rows": rows, "kind": kind, **measure(x, rows, g)})
            print(json.dumps(results[-1]))
    worst = {k: max(r[k] for r in results) for k in ("self_dot_error_max", "cosine_error_max", "dot_change_max")}
    report = {"command": " ".join(["python", "benchmarks/fp16_cosine.py", *sys.argv[1:]]), "seed": a.seed,
              "torch": torch.__version__, "numpy": np.__version__, "machine": platform.machine(),
              "worst": worst, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print("worst:", json.dumps(worst))


if __name__ == "__main__":
    main()
