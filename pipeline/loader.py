"""Batches of (dataset indices, uint8 images) from an image store, in a seeded order.

The order of an epoch is a function of (seed, epoch) only, so a resumed run sees the same batches, and it
does not depend on the number of processes: rank r of W takes slice r of every global batch.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipeline.imagestore import ImageStore


class BatchLoader:
    def __init__(self, store: ImageStore, indices: np.ndarray, batch_size: int, *, seed: int,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size  # per process
        self.global_batch = batch_size * world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.images = torch.from_numpy(store.read())  # small stores live in RAM as uint8

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        for b in range(start_batch, len(self)):
            batch = order[b * self.global_batch:(b + 1) * self.global_batch]
            mine = torch.from_numpy(batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])
            yield mine, self.images[mine]
