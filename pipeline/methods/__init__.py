"""Training objectives, one module each; the trainer picks one by name (`--method`).

Each method is an nn.Module holding the student (attribute `student`, the part that is exported) and whatever
else it trains or keeps (heads, momentum copies, queues, memories). It declares `needs_teacher`, `needs_labels`
and `views` (student views per image), computes `forward(views, t, y, idx) -> (loss, logs)` (t: teacher
embeddings (B, Dt) or None, y: labels, idx: dataset indices of the batch), and does its queue, memory and EMA
updates in `after_step()`. Parameters with requires_grad=False (momentum copies) are never optimised. Every
piece of state lives in parameters or buffers, so a checkpoint of the state_dict resumes it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.errors import CompressError

# name -> whether it reads teacher embeddings (the cache, or a live teacher)
METHODS = {"compress-2q": True, "compress-1q": True, "compress-2q-nomomentum": True,
           "reg": True, "reg-bn": True, "crd": True, "cc": True, "seed": True,
           "moco": False, "supervised": False}
# methods that need every training row of the cached teacher up front (k-means), so no live teacher
NEEDS_CACHE = {"cc"}
# --amp -> storage dtype of the anchor queues (read only by matrix products, which autocast runs in this dtype)
QUEUE_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DataInfo:
    """What some methods need to know about the data: dataset size (memories indexed by dataset index), the
    training indices (where negatives are drawn), the class count, and the cached teacher rows (k-means)."""
    num_items: int
    train_indices: np.ndarray
    num_classes: int
    teacher_rows: torch.Tensor | None = None


def method_needs_teacher(name: str) -> bool:
    if name not in METHODS:
        raise CompressError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, student: nn.Module, *, teacher_dim: int | None, data: DataInfo, hp: dict,
                 generator=None, resuming: bool = False) -> nn.Module:
    """hp: the method's hyper-parameters from the training config (bank_size, tau, ema, crd_*, seed_*, ...).
    `resuming`: a checkpoint will be loaded into the method, so state it holds is not computed here (CC's
    k-means)."""
    method_needs_teacher(name)
    queue_dtype = QUEUE_DTYPES[hp.get("amp", "none")]
    if name.startswith("compress-"):
        from pipeline.methods.compress import CompRess
        return CompRess(student, teacher_dim, variant=name.removeprefix("compress-"), K=hp["bank_size"],
                        tau=hp["tau"], m=hp["ema"], generator=generator, queue_dtype=queue_dtype)
    if name in ("reg", "reg-bn"):
        from pipeline.methods.regression import Regression
        return Regression(student, teacher_dim, bn=name == "reg-bn")
    if name == "crd":
        from pipeline.methods.crd import CRD
        return CRD(student, teacher_dim, data.num_items, torch.from_numpy(data.train_indices),
                   dim=hp["crd_dim"], K=hp["crd_negatives"], tau=hp["crd_tau"], m=hp["crd_memory_momentum"],
                   seed=hp["seed"], generator=generator)
    if name == "cc":
        from pipeline.methods.cc import ClusterClassification, cluster_ids, unassigned
        k = hp["clusters"] or min(10 * data.num_classes, len(data.train_indices))
        # resuming, the checkpoint holds the ids: k-means again would cost ~30 min at ImageNet scale
        ids = unassigned(data.num_items) if resuming else cluster_ids(data.teacher_rows, data.train_indices, k,
                                                                          seed=hp["seed"])
        return ClusterClassification(student, ids, k)
    if name == "seed":
        from pipeline.methods.seed import SEED
        return SEED(student, teacher_dim, K=hp["bank_size"], tau_s=hp["seed_tau_student"],
                    tau_t=hp["seed_tau_teacher"], generator=generator, queue_dtype=queue_dtype)
    if name == "moco":
        from pipeline.methods.moco import MoCo
        return MoCo(student, dim=hp["moco_dim"], K=hp["bank_size"], tau=hp["tau"], m=hp["ema"],
                    generator=generator, exclude_own_keys=hp["exclude_own_keys"], queue_dtype=queue_dtype)
    from pipeline.methods.supervised import Supervised
    return Supervised(student, data.num_classes)
