"""CC: cluster classification (Noroozi et al., CVPR 2018), the "CC" row of CompRess's tables.

The teacher's cached features of the training images are clustered once with seeded faiss k-means; every image
gets the id of its nearest centroid; the student then learns to predict that id with cross-entropy through a
training-only linear classifier.

k   number of clusters (paper: 16,000 on ImageNet; default here 10 x the number of classes, at most the number
    of training images). The ids are a buffer, saved with the run's checkpoint: a resumed run builds the method
    with `unassigned` ids (build_method(..., resuming=True)) and the checkpoint fills them, so k-means runs once
    per run, and under torchrun on rank 0 only, which broadcasts the ids. An id left at -1 cannot train
    silently: cross-entropy refuses the target.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.methods.losses import cluster_classification_loss
from pipeline.methods.base import BuildContext, Method, register
from pipeline.runtime import distributed
from pipeline.runtime.errors import CompressError


def cluster_ids(rows: torch.Tensor, train_indices: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> torch.Tensor:
    """(N,) cluster id of every cached row: k-means on the training rows only, then nearest centroid for all.
    A multi-view cache is clustered on view 0, the un-augmented centre crop (what the paper clustered).

    The rows stay in the cache's dtype and place: k-means copies only the training rows (it normalises them
    into fp16 itself) and the assignment widens one block at a time, so no float32 copy of the whole cache is
    made (10.5 GB for ImageNet's 1.28 M x 2048 rows). The ids equal those of clustering a float32 copy."""
    from pipeline.evaluation.cluster_assignment import assign, kmeans
    x = rows[:, 0] if rows.ndim == 3 else rows  # a view
    train = x[torch.as_tensor(train_indices, dtype=torch.long, device=x.device)]
    centroids = kmeans(train, k, niter=niter, seed=seed)
    del train
    return torch.from_numpy(assign(x, centroids))


def unassigned(n: int) -> torch.Tensor:
    """(n,) ids of -1: the placeholder a resumed run's checkpoint overwrites."""
    return torch.full((n,), -1, dtype=torch.long)


@register
class ClusterClassification(Method):
    names = ("cc",)
    needs_cache = True  # k-means over every training row of the cached teacher, up front

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "ClusterClassification":
        data = ctx.data
        n_train = len(data.train_indices)
        k = ctx.hp["clusters"] or min(10 * data.num_classes, n_train)
        if k > n_train:  # the setting's lower bound is checked with the others; this one needs the data
            raise CompressError(f"--clusters {k} is more than the {n_train} training images CC clusters; use "
                                f"--clusters {n_train} or fewer")
        # resuming, the checkpoint holds the ids: k-means again would cost ~30 min at ImageNet scale
        ids = unassigned(data.num_items)
        if not ctx.resuming:
            # one k-means (and one float copy of the rows) per run, not per process: rank 0's ids go to every rank
            if distributed.rank() == 0:
                ids = cluster_ids(data.teacher_rows, data.train_indices, k, seed=ctx.hp["seed"]).long()
            distributed.broadcast_(ids)
        return cls(ctx.student, ids, k)

    def __init__(self, student: nn.Module, ids: torch.Tensor, k: int):
        super().__init__()
        self.student = student
        self.classifier = nn.Linear(student.embed_dim, k)
        self.register_buffer("ids", ids.long())

    def forward(self, views, t=None, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        logits = self.classifier(self.student(views[0]))
        target = self.ids[idx]
        return cluster_classification_loss(logits, target), {"acc": (logits.argmax(1) == target).float().mean().item()}

