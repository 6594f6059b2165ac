"""Schedules precomputed per iteration and indexed by the global step: trivially resumable and loggable."""
from __future__ import annotations

import math

import numpy as np


def lr_schedule(base_lr: float, epochs: int, steps_per_epoch: int, kind: str = "step",
                milestones: tuple[int, ...] = (), gamma: float = 0.2, warmup_epochs: float = 0.0) -> np.ndarray:
    """Learning rate for every step of the run.

    step:   base_lr * gamma^(number of milestones passed), milestones in epochs (paper: 90/120 of 130, x0.2)
    cosine: half-cosine from base_lr to 0
    Both after an optional linear warm-up.
    """
    total = epochs * steps_per_epoch
    epoch_of_step = np.arange(total) / steps_per_epoch
    if kind == "step":
        lr = base_lr * gamma ** np.searchsorted(np.asarray(sorted(milestones)), epoch_of_step, side="right")
    elif kind == "cosine":
        lr = base_lr * 0.5 * (1 + np.cos(math.pi * epoch_of_step / max(epochs, 1)))
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    warm = int(warmup_epochs * steps_per_epoch)
    if warm:
        lr[:warm] *= (np.arange(warm) + 1) / warm
    return lr
