"""Teacher agreement: how faithfully a student keeps its teacher's neighbourhoods, labels or not.

For every val image, S are its k nearest training images under the student and T under the teacher (cosine on
l2-normalised features, the same blockwise search as NN / kNN, pipeline/evaluation/search.py):

    agree10 = mean over val of |S ∩ T| / k     (k = 10; 1.0 = the same 10 neighbours, as a set)
    agree1  = fraction of val images whose single nearest training image is the same under both

Both are fractions in [0, 1], not percentages. Features that share nothing with the teacher's score about k / N
and 1 / N (N training images): k of the N rows land in T by chance, each with probability k / N.
The two feature sets may have different widths; only the neighbour ids are compared.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.evaluation.search import search
from pipeline.runtime.errors import CompressError

K = 10  # the neighbours compared, the issue's |S ∩ T| / 10


def _check(name: str, train_x, val_x) -> None:
    if train_x.ndim != 2 or val_x.ndim != 2 or train_x.shape[1] != val_x.shape[1]:
        raise CompressError(f"{name} features must be (N, D) with one D: train {tuple(train_x.shape)}, "
                            f"val {tuple(val_x.shape)}")


def teacher_agreement(student_train, student_val, teacher_train, teacher_val, k: int = K,
                      device: torch.device | str = "cpu") -> dict:
    """{"agree10": mean |S ∩ T| / k, "agree1": same nearest neighbour, "k": k actually used}.

    Rows i of the student and teacher matrices must be the same image (train with train, val with val).
    `k` is capped at the number of training rows; "agree10" keeps its name for any k (the record says which).
    """
    _check("student", student_train, student_val)
    _check("teacher", teacher_train, teacher_val)
    if len(student_train) != len(teacher_train) or len(student_val) != len(teacher_val):
        raise CompressError(f"student and teacher features cover different images: train {len(student_train)} vs "
                            f"{len(teacher_train)}, val {len(student_val)} vs {len(teacher_val)} rows")
    if len(student_train) == 0 or len(student_val) == 0 or k < 1:
        raise CompressError(f"agreement needs train and val rows and k >= 1 (train {len(student_train)}, "
                            f"val {len(student_val)}, k {k})")
    _, s_ids = search(student_train, student_val, k, device)  # (Q, k), best first
    _, t_ids = search(teacher_train, teacher_val, k, device)
    k = s_ids.shape[1]
    # |S ∩ T| per row: ids within a row are distinct, so count the (Q, k, k) equal pairs (50k val x 100: small)
    hits = (s_ids[:, :, None] == t_ids[:, None, :]).any(axis=2)
    return {"agree10": float(hits.sum(1).mean() / k), "agree1": float(np.mean(s_ids[:, 0] == t_ids[:, 0])),
            "k": int(k)}
