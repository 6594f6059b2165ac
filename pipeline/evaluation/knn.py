"""Nearest-neighbour classification by cosine similarity: 1-NN (the paper's NN column) and weighted kNN.

kNN follows the DINO / InstDisc convention: the k nearest train features vote for their labels with weight
exp(sim / tau), a class scores the sum of its weights, the prediction is the best class (ties go to the lower
class index). Both come from one exact search (pipeline/evaluation/search.py: faiss or torch, on the GPU when
there is one, in blocks of rows), so NN and kNN-20 always see the same neighbours.

Memory: the search reads the (fp16) train features one block at a time; beyond them only one block, one
similarity tile and the (Q, k) neighbours exist (no index, no float32 copy, no N_val x N_train matrix).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.evaluation.search import search


@dataclass
class KNNConfig:
    k: int = 20  # neighbours that vote
    tau: float = 0.07  # temperature of the vote weights exp(sim / tau)
    block_rows: int | None = None  # rows converted at once; None: the backend's budget

    def describe(self) -> dict:
        return {"k": self.k, "tau": self.tau, "voting": "weighted: sum over neighbours of exp(cos/tau)",
                "metric": "cosine (inner product of l2-normalised features)"}


def vote(sims: np.ndarray, neighbour_labels: np.ndarray, num_classes: int, tau: float) -> np.ndarray:
    """Weighted vote: class score = sum of exp(sim / tau) over the neighbours of that class; argmax."""
    weights = torch.from_numpy(sims).double().div(tau).exp()  # float64: exp(1/0.07) ~ 1.6e6, sums stay exact
    scores = torch.zeros(len(sims), num_classes, dtype=torch.float64)
    scores.scatter_add_(1, torch.from_numpy(neighbour_labels).long(), weights)  # (Q, C)
    return scores.argmax(1).numpy()


def knn_classify(train_x, train_y, queries, num_classes: int, cfg: KNNConfig = KNNConfig(),
                 device: torch.device | str = "cpu"):
    """(nn_pred, knn_pred), each (Q,) int64: 1-NN label and the weighted k-NN vote, from one search on `device`."""
    train_y = train_y.cpu().numpy() if isinstance(train_y, torch.Tensor) else np.asarray(train_y)
    train_y = train_y.astype(np.int64)
    sims, ids = search(train_x, queries, cfg.k, device, cfg.block_rows)
    neighbour_labels = train_y[ids]  # (Q, k)
    return neighbour_labels[:, 0].copy(), vote(sims, neighbour_labels, num_classes, cfg.tau)
