"""Batches of (dataset indices, uint8 images) from an image store, in a seeded order.

The order of an epoch is a function of (seed, epoch) only, so a resumed run sees the same batches, and it
does not depend on the number of processes: rank r of W takes slice r of every global batch.

Two read modes, chosen by the store's size (or forced with `in_memory`):

- in memory: the whole uint8 array is read once; an epoch is a full random permutation.
- paged (FFCV's quasi-random order): the rows are cut into pages of consecutive rows, the pages are shuffled,
  and the rows inside each window of `window_pages` pages are shuffled again. A page is read from HDF5 as one
  contiguous block the first time a batch needs it and dropped after its last use, so RAM holds about one
  window and every read is sequential.

Batches stay uint8 (a quarter of float32 traffic); with `pin_memory` they come in page-locked memory so the
host-to-device copy can be asynchronous. Crops, flips and normalisation happen on the device (augment.py).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.data.imagestore import ImageStore


def _default_memory_limit() -> int:
    """A quarter of physical RAM: room for the model, the teacher cache and other processes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


class BatchLoader:
    def __init__(self, store: ImageStore, indices: np.ndarray, batch_size: int, *, seed: int,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1,
                 in_memory: bool | None = None, memory_limit: int | None = None, page_rows: int | None = None,
                 window_pages: int = 16, pin_memory: bool | None = None):
        """`in_memory=None` reads the store into RAM when it is under `memory_limit` bytes (default a quarter
        of RAM), else pages it. `page_rows` defaults to about 1 MiB of rows; `pin_memory=None` pins when CUDA
        is available."""
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size  # per process
        self.global_batch = batch_size * world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        row_bytes = int(np.prod(store.shape[1:]))
        limit = _default_memory_limit() if memory_limit is None else memory_limit
        self.in_memory = (len(self.indices) * row_bytes <= limit) if in_memory is None else in_memory
        self.page_rows = page_rows or max(1, (1 << 20) // max(1, row_bytes))
        self.window_pages = window_pages
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.images = torch.from_numpy(store.read()) if self.in_memory else None

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's dataset indices, in the order all ranks together consume them."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, epoch])
        if self.in_memory:
            return self.indices[rng.permutation(len(self.indices))]
        return self.indices[self._page_order(rng)]

    def _page_order(self, rng: np.random.Generator) -> np.ndarray:
        """Positions into `indices`: shuffled pages, rows shuffled within windows of `window_pages` pages."""
        n, p = len(self.indices), self.page_rows
        pages = rng.permutation(-(-n // p))
        rows = np.concatenate([np.arange(q * p, min((q + 1) * p, n)) for q in pages]) if n else pages
        span = p * self.window_pages
        for lo in range(0, n, span):
            rows[lo:lo + span] = rows[lo:lo + span][rng.permutation(len(rows[lo:lo + span]))]
        return rows

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        pages = None if self.in_memory else _PageCache(self, order)
        for b in range(start_batch, len(self)):
            batch = order[b * self.global_batch:(b + 1) * self.global_batch]
            mine = torch.from_numpy(batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])
            images = self.images[mine] if pages is None else pages.gather(mine.numpy(), b)
            yield mine, (images.pin_memory() if self.pin_memory else images)


class _PageCache:
    """Pages of consecutive `indices` positions, read as contiguous blocks and freed after their last use."""

    def __init__(self, loader: BatchLoader, order: np.ndarray):
        self.loader = loader
        idx = loader.indices
        self.sorter = np.argsort(idx, kind="stable")
        self.p = loader.page_rows
        # last global batch that touches each page, so a page is dropped right after it
        page_of_order = self.position(order) // self.p
        self.last = np.zeros(-(-len(idx) // self.p), dtype=np.int64)
        np.maximum.at(self.last, page_of_order, np.arange(len(order)) // loader.global_batch)
        self.pages: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def position(self, rows: np.ndarray) -> np.ndarray:
        """Dataset indices -> their positions in `indices`."""
        idx = self.loader.indices
        return self.sorter[np.searchsorted(idx, rows, sorter=self.sorter)]

    def _page(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        if q not in self.pages:
            rows = self.loader.indices[q * self.p:(q + 1) * self.p]
            lo, hi = int(rows.min()), int(rows.max()) + 1
            block = self.loader.store.read(lo, hi)  # one contiguous read, even for a strided split
            self.pages[q] = (rows, block[rows - lo] if hi - lo != len(rows) else block)
        return self.pages[q]

    def gather(self, rows: np.ndarray, batch: int) -> torch.Tensor:
        pos = self.position(rows)
        shape = self.loader.store.shape[1:]
        out = np.empty((len(rows),) + tuple(shape), dtype=np.uint8)
        for q in np.unique(pos // self.p):
            _, block = self._page(int(q))
            m = pos // self.p == q
            out[m] = block[pos[m] - q * self.p]
        for q in [q for q in self.pages if self.last[q] <= batch]:
            del self.pages[q]
        return torch.from_numpy(out)

