"""Cluster assignment (CA): k-means of the train features, clusters matched one-to-one to classes on the train
set by the Hungarian method, accuracy on val through that map.

Two pair scores for the matching (method.md):

- "precision" (the paper's, the one reported): |cluster ∩ class| / |cluster|. A small pure cluster counts as
  much as a large pure one.
- "count" (the usual clustering accuracy): |cluster ∩ class|.

Choices, stated because the original release left them implicit:

- k-means is faiss, seeded, 20 iterations, on **all** points (faiss subsamples to 256 points per centroid by
  default; that is switched off).
- Matching is one-to-one. With k > C clusters, k - C clusters stay unmatched and every val point that lands in
  one counts as wrong; with k < C some classes get no cluster.
- An empty train cluster (no train point, so no evidence) scores 0 with every class and is never mapped to a
  class: val points that land in it count as wrong. It can never crash the matching (no 0 / 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.runtime.errors import CompressError
from pipeline.evaluation.knn import CHUNK, as_unit_f32, use_gpu

SCORES = ("precision", "count")
UNMATCHED = -1


@dataclass
class CAConfig:
    clusters: int | None = None  # None: the number of classes
    niter: int = 20
    seed: int = 0
    nredo: int = 1  # k-means restarts, best objective kept; the paper ran one
    reported: str = "precision"

    def describe(self, k: int) -> dict:
        return {"k": k, "niter": self.niter, "seed": self.seed, "nredo": self.nredo, "points": "all", "library": "faiss",
                "matching": "Hungarian, one-to-one (scipy linear_sum_assignment) on train",
                "reported_score": self.reported, "scores": list(SCORES),
                "unmatched_or_empty_clusters": "count as wrong"}


def kmeans(train_x, k: int, niter: int = 20, seed: int = 0, nredo: int = 1) -> np.ndarray:
    """(k, D) centroids of the l2-normalised train rows; every point is used, the run is seeded."""
    x = as_unit_f32(train_x)
    if not 1 <= k <= len(x):
        raise CompressError(f"cannot make {k} clusters of {len(x)} train points; use --ca-clusters between 1 "
                            f"and {len(x)}")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, nredo=nredo, verbose=False, gpu=use_gpu(),
                      max_points_per_centroid=len(x) // k + 1, min_points_per_centroid=1)
    km.train(x)
    return km.centroids


def assign(x, centroids: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """(N,) index of the nearest centroid (L2, as k-means itself assigns), in chunks."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), chunk):
        out[lo:lo + chunk] = index.search(as_unit_f32(x[lo:lo + chunk]), 1)[1][:, 0]
    return out


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


def cluster_assignment(train_x, train_y, val_x, val_y, num_classes: int, cfg: CAConfig = CAConfig()) -> dict:
    """k-means on train, both matchings on train, accuracy on val: {"precision": %, "count": %, ...}."""
    k = cfg.clusters or num_classes
    centroids = kmeans(train_x, k, cfg.niter, cfg.seed, cfg.nredo)
    train_c, val_c = assign(train_x, centroids), assign(val_x, centroids)
    train_y, val_y = np.asarray(train_y, dtype=np.int64), np.asarray(val_y, dtype=np.int64)
    out = {"k": k, "empty_clusters": int(k - len(np.unique(train_c)))}
    for score in SCORES:
        mapping = match(train_c, train_y, k, num_classes, score)
        out[score] = mapped_accuracy(val_c, val_y, mapping)
        out[f"{score}_train"] = mapped_accuracy(train_c, train_y, mapping)
    out["reported"] = out[cfg.reported]
    return out
