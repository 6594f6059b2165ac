"""Randomness as a function of (seed, counter): nothing to save, identical after a resume, and the same on every
rank (the trainer's augmentations per step, CRD's negatives per draw)."""
from __future__ import annotations

import torch


def counter_generator(seed: int, counter: int) -> torch.Generator:
    """A CPU generator seeded from (seed, counter); distinct counters give unrelated streams."""
    return torch.Generator().manual_seed(seed * 1_000_003 + counter)
