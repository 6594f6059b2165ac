"""All evaluation protocols on one pair of feature matrices: NN, kNN-20, linear probe, cluster assignment.

Every number comes with the settings that produced it (`protocols`), so a table never mixes kNN variants or
probe schedules without saying so. The features may be the evaluation's fp16 matrix (views of it): every
protocol reads them in blocks and runs on `device` (pipeline/evaluation/backend.py), so nothing here copies them.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.evaluation import backend as backends
from pipeline.evaluation.cluster_assignment import CAConfig, cluster_assignment
from pipeline.runtime.errors import CompressError
from pipeline.evaluation.knn import KNNConfig, knn_classify
from pipeline.evaluation.linear_probe import ProbeConfig, train_probe


def _labels(y) -> np.ndarray:
    return (y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)).astype(np.int64)


def _top1(pred: np.ndarray, y: np.ndarray) -> float:
    return float(100.0 * np.mean(pred == y))


def _check(train_x, train_y, val_x, val_y, num_classes: int) -> None:
    if train_x.ndim != 2 or val_x.ndim != 2 or train_x.shape[1] != val_x.shape[1]:
        raise CompressError(f"features must be (N, D) with one D: train {tuple(train_x.shape)}, "
                            f"val {tuple(val_x.shape)}")
    if len(train_x) != len(train_y) or len(val_x) != len(val_y):
        raise CompressError(f"features and labels differ in length: train {len(train_x)}/{len(train_y)}, "
                            f"val {len(val_x)}/{len(val_y)}")
    if len(train_x) == 0 or len(val_x) == 0:
        raise CompressError(f"empty split: train {len(train_x)}, val {len(val_x)} rows")
    for name, y in (("train", train_y), ("val", val_y)):
        if y.min() < 0 or y.max() >= num_classes:
            raise CompressError(f"{name} labels span {y.min()}..{y.max()}, outside 0..{num_classes - 1}")


def evaluate_features(train_x, train_y, val_x, val_y, num_classes: int, *, knn_k: int = 20,
                      knn_tau: float = 0.07, ca_clusters: int | None = None, seed: int = 0,
                      probe_epochs: int = 40, probe_batch_size: int | None = 256,
                      device: torch.device | str = "cpu", return_predictions: bool = False,
                      train_linear: Callable | None = None) -> dict:
    """{"nn", "knn20", "linear", "ca", "ca_count" (top-1 %), "protocols": {...}}.

    `knn20` is named for the default k; `protocols.knn.k` says which k ran. With `return_predictions` the
    dict also holds "predictions": {"nn", "knn", "linear"} val label arrays (not for JSON).
    `train_linear(train_x, train_y, num_classes, device) -> (predict, record)` trains the linear probe;
    None: the fast probe on these features (linear_probe.train_probe with probe_epochs, probe_batch_size, seed).
    """
    train_y, val_y = _labels(train_y), _labels(val_y)
    _check(train_x, train_y, val_x, val_y, num_classes)
    device = torch.device(device)

    knn = KNNConfig(k=knn_k, tau=knn_tau)
    nn_pred, knn_pred = knn_classify(train_x, train_y, val_x, num_classes, knn, device)

    if train_linear is None:
        probe = ProbeConfig(epochs=probe_epochs, batch_size=probe_batch_size, seed=seed)
        predict, probe_record = train_probe(train_x, train_y, num_classes, probe, device)
    else:
        predict, probe_record = train_linear(train_x, train_y, num_classes, device)
    linear_pred = predict(val_x)

    ca_cfg = CAConfig(clusters=ca_clusters, seed=seed)
    ca = cluster_assignment(train_x, train_y, val_x, val_y, num_classes, ca_cfg, device)

    out = {
        "nn": _top1(nn_pred, val_y), "knn20": _top1(knn_pred, val_y), "linear": _top1(linear_pred, val_y),
        "ca": ca["reported"], "ca_count": ca["count"],
        "protocols": {
            "features": "l2-normalised features as given",
            "nn": {"k": 1, "metric": "cosine", "split": "train -> val"},
            "knn": {**knn.describe(), "library": backends.choose(device).name},
            "linear": probe_record,
            "ca": {**ca_cfg.describe(ca["k"], ca["library"]), "empty_clusters": ca["empty_clusters"],
                   "precision_train": ca["precision_train"], "count_train": ca["count_train"]},
            "sizes": {"train": int(len(train_y)), "val": int(len(val_y)), "classes": int(num_classes),
                      "dim": int(train_x.shape[1])},
        },
    }
    if return_predictions:
        out["predictions"] = {"nn": nn_pred, "knn": knn_pred, "linear": linear_pred}
    return out
