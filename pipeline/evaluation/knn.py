"""Nearest-neighbour classification by cosine similarity: 1-NN (the paper's NN column) and weighted kNN.

kNN follows the DINO / InstDisc convention: the k nearest train features vote for their labels with weight
exp(sim / tau), a class scores the sum of its weights, the prediction is the best class (ties go to the lower
class index). Both come from one faiss search, so NN and kNN-20 always see the same neighbours.

Memory: the flat index holds the train set once (1.28 M x 2048 fp32 = 10.5 GB, fits RAM or one GPU); train
rows are added and queries searched in chunks, so nothing else grows with N (no N_val x N_train matrix).
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

CHUNK = 8192  # rows per add/search call: bounds temporary fp32 copies to CHUNK x D


@dataclass
class KNNConfig:
    k: int = 20  # neighbours that vote
    tau: float = 0.07  # temperature of the vote weights exp(sim / tau)
    chunk: int = CHUNK

    def describe(self) -> dict:
        return {"k": self.k, "tau": self.tau, "voting": "weighted: sum over neighbours of exp(cos/tau)",
                "metric": "cosine (inner product of l2-normalised features)"}


def as_unit_f32(x) -> np.ndarray:
    """float32, C-contiguous, rows l2-normalised: what faiss IndexFlatIP needs for cosine."""
    x = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def use_gpu() -> bool:
    """faiss-gpu with a visible GPU; faiss-cpu (no GpuResources) otherwise."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(train_x, chunk: int = CHUNK) -> faiss.Index:
    """An exact inner-product index over the l2-normalised train rows, on the GPU when faiss has one."""
    d = train_x.shape[1]
    index = faiss.IndexFlatIP(d)
    if use_gpu():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    for lo in range(0, len(train_x), chunk):
        index.add(as_unit_f32(train_x[lo:lo + chunk]))
    return index


def search(train_x, queries, k: int, chunk: int = CHUNK, index: faiss.Index | None = None):
    """(sims, ids), each (Q, k): the k most cosine-similar train rows of every query, best first."""
    index = index if index is not None else build_index(train_x, chunk)
    k = min(k, index.ntotal)
    sims = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), chunk):
        sims[lo:lo + chunk], ids[lo:lo + chunk] = index.search(as_unit_f32(queries[lo:lo + chunk]), k)
    return sims, ids


def vote(sims: np.ndarray, neighbour_labels: np.ndarray, num_classes: int, tau: float) -> np.ndarray:
    """Weighted vote: class score = sum of exp(sim / tau) over the neighbours of that class; argmax."""
    weights = torch.from_numpy(sims).double().div(tau).exp()  # float64: exp(1/0.07) ~ 1.6e6, sums stay exact
    scores = torch.zeros(len(sims), num_classes, dtype=torch.float64)
    scores.scatter_add_(1, torch.from_numpy(neighbour_labels).long(), weights)  # (Q, C)
    return scores.argmax(1).numpy()


def knn_classify(train_x, train_y, queries, num_classes: int, cfg: KNNConfig = KNNConfig()):
    """(nn_pred, knn_pred), each (Q,) int64: 1-NN label and the weighted k-NN vote, from one search."""
    train_y = np.asarray(train_y, dtype=np.int64)
    sims, ids = search(train_x, queries, cfg.k, cfg.chunk)
    neighbour_labels = train_y[ids]  # (Q, k)
    return neighbour_labels[:, 0].copy(), vote(sims, neighbour_labels, num_classes, cfg.tau)
