"""Cluster assignment (CA): k-means of the train features, clusters matched one-to-one to classes on the train
set by the Hungarian method, accuracy on val through that map.

Two pair scores for the matching (method.md):

- "precision" (the paper's, the one reported): |cluster ∩ class| / |cluster|. A small pure cluster counts as
  much as a large pure one.
- "count" (the usual clustering accuracy): |cluster ∩ class|.

Choices, stated because the original release left them implicit:

- k-means is seeded, 20 iterations, on **all** points (faiss subsamples to 256 points per centroid by
  default; that is switched off): faiss's, or a torch Lloyd where faiss is absent or cannot use the GPU
  (pipeline/evaluation/kmeans.py, bounded memory); the record names the library.
- Matching is one-to-one. With k > C clusters, k - C clusters stay unmatched and every val point that lands in
  one counts as wrong; with k < C some classes get no cluster.
- An empty train cluster (no train point, so no evidence) scores 0 with every class and is never mapped to a
  class: val points that land in it count as wrong. It can never crash the matching (no 0 / 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from pipeline.evaluation import backend as backends
from pipeline.evaluation.kmeans import assign, kmeans
from pipeline.runtime.errors import CompressError

SCORES = ("precision", "count")
UNMATCHED = -1


@dataclass
class CAConfig:
    clusters: int | None = None  # None: the number of classes
    niter: int = 20
    seed: int = 0
    nredo: int = 1  # k-means restarts, best objective kept; the paper ran one
    reported: str = "precision"

    def describe(self, k: int, library: str = "faiss-cpu") -> dict:
        return {"k": k, "niter": self.niter, "seed": self.seed, "nredo": self.nredo, "points": "all",
                "library": library,
                "matching": "Hungarian, one-to-one (scipy linear_sum_assignment) on train",
                "reported_score": self.reported, "scores": list(SCORES),
                "unmatched_or_empty_clusters": "count as wrong"}


def contingency(clusters: np.ndarray, labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """(k, C) counts |cluster ∩ class|."""
    table = np.zeros((k, num_classes), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    return table


def match(clusters: np.ndarray, labels: np.ndarray, k: int, num_classes: int, score: str) -> np.ndarray:
    """(k,) class of each cluster under a one-to-one Hungarian matching; UNMATCHED (-1) where none/empty."""
    if score not in SCORES:
        raise CompressError(f"unknown matching score {score!r}; use one of {', '.join(SCORES)}")
    table = contingency(clusters, labels, k, num_classes).astype(np.float64)
    sizes = table.sum(1, keepdims=True)
    if score == "precision":
        table = np.divide(table, sizes, out=np.zeros_like(table), where=sizes > 0)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = np.full(k, UNMATCHED, dtype=np.int64)
    mapping[rows] = cols
    mapping[sizes[:, 0] == 0] = UNMATCHED  # an empty cluster carries no evidence for any class
    return mapping


def mapped_accuracy(clusters: np.ndarray, labels: np.ndarray, mapping: np.ndarray) -> float:
    """Top-1 % of `labels` predicted by mapping[cluster]; unmatched clusters are wrong."""
    return float(100.0 * np.mean(mapping[clusters] == np.asarray(labels)))


def cluster_assignment(train_x, train_y, val_x, val_y, num_classes: int, cfg: CAConfig = CAConfig(),
                       device: torch.device | str = "cpu") -> dict:
    """k-means on train, both matchings on train, accuracy on val: {"precision": %, "count": %, "library", ...}.
    The arithmetic runs on `device` (pipeline/evaluation/backend.py)."""
    k = cfg.clusters or num_classes
    be = backends.choose(device)
    centroids = kmeans(train_x, k, cfg.niter, cfg.seed, cfg.nredo, be=be)
    train_c, val_c = assign(train_x, centroids, be=be), assign(val_x, centroids, be=be)
    train_y, val_y = np.asarray(train_y, dtype=np.int64), np.asarray(val_y, dtype=np.int64)
    out = {"k": k, "empty_clusters": int(k - len(np.unique(train_c))), "library": be.name}
    for score in SCORES:
        mapping = match(train_c, train_y, k, num_classes, score)
        out[score] = mapped_accuracy(val_c, val_y, mapping)
        out[f"{score}_train"] = mapped_accuracy(train_c, train_y, mapping)
    out["reported"] = out[cfg.reported]
    return out
