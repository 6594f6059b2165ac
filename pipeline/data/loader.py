"""Batches of (dataset indices, uint8 images) from an image store, in a seeded order, read ahead in a thread.

The order of an epoch is a function of (seed, epoch) only, so a resumed run sees the same batches, and it
does not depend on the number of processes: rank r of W takes slice r of every global batch.

Two read modes, decided once for all ranks by comparing the training rows' bytes with a per-node budget
(`memory_limit`, the trainer's --loader-memory; forced with `in_memory`):

- in RAM: the checked training rows are read once into one copy per node (nodecopy.py: the node's ranks share
  it); an epoch is a full random permutation.
- paged (FFCV's quasi-random order): pages of `page_rows` consecutive store rows (whole checked blocks) are
  shuffled, and the rows inside each window of `window_pages` pages are shuffled again. A page is read from
  images.h5 the first time one of this rank's batches needs it and dropped after its last use, so RAM holds
  about one window and every read is one contiguous run of blocks.

A background thread builds the batches `prefetch` ahead of the consumer: it reads and checks blocks (reads and
hashing release the GIL; past the page cache by default) and gathers each batch's rows (np.take) into a buffer of
its own, page-locked when CUDA is there, so the host-to-device copy can be asynchronous. A batch's images are
valid until the next batch is asked for (CPU buffers are reused; torch's pinned allocator recycles page-locked
ones once their copies are done): clone what you keep. An error in the thread (a damaged block) is raised in
the consumer. In RAM, `builders` threads build alternate batches: one thread gathers random rows at about
half the speed of a sequential copy (benchmarks/gather_pattern.py), two together near it (np.take releases the
GIL). Paged batches have one builder: the page plan frees an arena slot only after the batch before has been
gathered.
Batches stay uint8 (a quarter of float32 traffic); crops, flips and normalisation happen on the device.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pipeline.data.imagestore import ImageStore
from pipeline.data.nodecopy import Node, node_copy
from pipeline.data.storereader import aligned_empty
from pipeline.runtime.memory import node_ram, parse_size
from pipeline.runtime.provenance import usable_cpus

def memory_budget(text: str) -> int:
    """Bytes of RAM the node may spend on its one in-RAM copy of the training images (--loader-memory):
    "auto" is a quarter of the node's RAM (room for the model, the teacher cache and other processes), "0"
    always pages, a size such as 8G or 512M is taken as given. A bad value is a one-line CompressError."""
    size = parse_size(text, "--loader-memory")
    return node_ram() // 4 if size is None else size


class BatchLoader:
    def __init__(self, store: ImageStore, indices: np.ndarray, batch_size: int, *, seed: int,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1,
                 in_memory: bool | None = None, memory_limit: int | None = None, page_rows: int | None = None,
                 window_pages: int = 16, pin_memory: bool | None = None, prefetch: int = 2,
                 readers: int | None = None, node: Node | None = None, uncached: bool = True,
                 builders: int | None = None):
        """`in_memory=None` holds the training rows in RAM when they fit `memory_limit` bytes per node (default
        a quarter of the node's RAM), else pages them. `page_rows` defaults to whole blocks, about 16 MiB;
        `window_pages` 16; `prefetch` 2 batches ahead (0: build each batch when asked, in this thread);
        `readers` threads read and check pages about a window ahead (default 4 to 8, by CPUs);
        `pin_memory=None` pins when CUDA is available; `node` says which ranks share this node's copy (one
        process by default); `uncached` reads images.h5 past the page cache (O_DIRECT, storereader.py) where
        the filesystem allows it: the data is read once per epoch anyway, and a cached copy would only push out
        what else the node keeps in RAM (--loader-io); `builders` threads build alternate in-RAM batches
        (default 2 when this process has 2 or more of the node's cores, else 1; paged: always 1)."""
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size  # per process
        self.global_batch = batch_size * world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.row_shape = tuple(store.shape[1:])
        row_bytes = int(np.prod(self.row_shape))
        block = store.block_rows
        # 16 MiB pages and >= 4 readers whatever the CPUs: a cold disk serves a shuffled order of pages near its
        # sequential speed only with large requests, several in flight (4 MiB pages and 2 readers reached 0.37 of
        # a sequential read here; benchmarks/scale_loader.py). Readers mostly wait on the disk, and sha256 releases
        # the GIL, so more threads than cores is right.
        self.page_rows = page_rows or block * max(1, (16 << 20) // max(1, block * row_bytes))
        self.window_pages, self.prefetch = window_pages, prefetch
        self.readers = readers or max(4, min(8, os.cpu_count() or 1))
        self._spare: queue.SimpleQueue = queue.SimpleQueue()  # CPU batch buffers nobody holds any more
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.node = node or Node()
        self.uncached = uncached
        self.memory_limit = memory_budget("auto") if memory_limit is None else memory_limit
        self.train_bytes = len(self.indices) * row_bytes
        if in_memory is None:  # rank 0's decision: the read mode decides the order, so every rank must agree
            in_memory = bool(self.node.agree(self.train_bytes <= self.memory_limit))
        # in RAM, row k of `images` is indices[_sorter[k]]: filled by one sequential pass over the store
        self._sorter = np.argsort(self.indices, kind="stable")
        self.images = self._load() if in_memory else None
        self.in_memory = self.images is not None
        # paged batches have one builder: the page plan frees an arena slot once the batch before is gathered
        default = 2 if usable_cpus() // max(1, self.node.local_size) >= 2 else 1
        self.builders = (builders or default) if self.in_memory else 1

    def _load(self) -> np.ndarray | None:
        shape = (len(self.indices),) + self.row_shape
        if len(self.indices) == 0:
            return np.empty(shape, dtype=np.uint8)
        images = node_copy(self.node, shape, self._fill, self.store.fingerprint)
        if images is not None:
            self._ram_row = np.empty_like(self._sorter)
            self._ram_row[self._sorter] = np.arange(len(self._sorter))
        return images

    def _fill(self, out: np.ndarray) -> None:
        """The training rows, in sorted-index order, read ~64 MiB of checked blocks at a time."""
        rows = self.indices[self._sorter]
        r, reader = self.store.block_rows, self.store.reader()
        group = max(1, (64 << 20) // max(1, r * int(np.prod(self.row_shape))))
        scratch = None
        for g0 in range(int(rows[0]) // r, int(rows[-1]) // r + 1, group):
            g1 = min(g0 + group, -(-self.store.n // r)) - 1
            a, b = np.searchsorted(rows, [g0 * r, (g1 + 1) * r])
            if a == b:
                continue
            lo, hi = g0 * r, min((g1 + 1) * r, self.store.n)
            if b - a == hi - lo:  # every row of these blocks is a training row: read straight into place
                reader.read_blocks(g0, g1, out=out[a:b], uncached=self.uncached)
                continue
            if scratch is None:
                scratch = aligned_empty((group * r,) + self.row_shape)
            block = reader.read_blocks(g0, g1, out=scratch[:hi - lo], uncached=self.uncached)
            _gather(_rows_of(block), rows[a:b] - lo, out[a:b])

    def describe(self) -> dict:
        """What the run log records about the read mode."""
        return {"mode": "ram" if self.in_memory else "paged", "train_bytes": self.train_bytes,
                "memory_limit": self.memory_limit, "node_processes": self.node.local_size,
                "page_rows": self.page_rows, "window_pages": self.window_pages, "prefetch": self.prefetch,
                "direct_reads": self.store.reader().direct, "uncached": self.uncached,
                "builders": self.builders}

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's dataset indices, in the order all ranks together consume them."""
        return self.indices[self._positions(epoch)]

    def _positions(self, epoch: int) -> np.ndarray:
        n = len(self.indices)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch])
        if self.in_memory:
            return rng.permutation(n)
        # pages of store rows, visited in a random order; rows shuffled inside each window of pages
        pages, page_of = np.unique(self.indices // self.page_rows, return_inverse=True)
        visit = np.empty(len(pages), dtype=np.int64)
        visit[rng.permutation(len(pages))] = np.arange(len(pages))
        window = visit[page_of] // self.window_pages
        return np.lexsort((rng.random(n), window))

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pos = self._positions(epoch)
        g, b = self.global_batch, self.batch_size
        mine = [pos[k * g:(k + 1) * g][self.rank * b:(self.rank + 1) * b] for k in range(start_batch, len(self))]
        if self.in_memory:
            source = _RamRows(self.images, self._ram_row)
        else:  # read ahead by about one window of pages
            ahead = -(-self.window_pages * self.page_rows // max(1, self.global_batch))
            source = _Pages(self.store, self.indices, self.page_rows, mine, ahead, self.readers, self.uncached)
        batches = _Batches(source, self.indices, mine, (b,) + self.row_shape, self.pin_memory, self._spare)
        if self.prefetch <= 0:
            return _inline(batches, len(mine))
        return _ahead(batches, len(mine), self.prefetch, self.builders)


def _rows_of(array: np.ndarray) -> np.ndarray:
    """A (N, row bytes) view of `array` (a read-only mapping included: nothing writes to it)."""
    return array.reshape(len(array), -1)


def _gather(rows: np.ndarray, which: np.ndarray, out: np.ndarray) -> None:
    """out[i] = rows[which[i]], by np.take on the calling thread. mode="clip" writes straight into `out` (the
    default mode copies through a temporary). Not torch.index_select: its intra-op threads, started from the
    loader's thread, compete with the training step's threads and the page readers for the cores
    (`benchmarks/scale_loader.py --old-loader 7896d47` times both)."""
    np.take(rows, which, axis=0, out=out.reshape(len(out), -1), mode="clip")


class _RamRows:
    """Batches gathered from the node's in-RAM copy."""

    def __init__(self, images: np.ndarray, ram_row: np.ndarray):
        self.rows, self.ram_row = _rows_of(images), ram_row

    def gather(self, k: int, positions: np.ndarray, out: np.ndarray) -> None:
        _gather(self.rows, self.ram_row[positions], out)

    def close(self) -> None:
        pass


class _Pages:
    """This rank's batches gathered from pages read into the slots of one arena. `readers` threads read pages
    (and check their blocks) up to `lookahead` batches before the first batch that needs each; a slot is free
    again after its page's last batch. The schedule is planned up front, so the arena holds exactly the peak
    number of live pages and a read never lands in a slot still in use."""

    def __init__(self, store: ImageStore, indices: np.ndarray, page_rows: int, mine: list[np.ndarray],
                 lookahead: int, readers: int, uncached: bool):
        self.store, self.p, self.uncached = store, page_rows, uncached
        rows = [indices[m] for m in mine]
        page_ids = [r // page_rows for r in rows]
        used = [np.unique(q).tolist() for q in page_ids]
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for k, pages in enumerate(used):
            for page in pages:
                first.setdefault(page, k)
                last[page] = k
        starts: list[list[int]] = [[] for _ in used]  # pages whose read is started at batch k
        for page, k in first.items():
            starts[max(0, k - lookahead)].append(page)
        free, self.slot, self.start, count = [], {}, [], 0
        for k, pages in enumerate(used):
            for page in starts[k]:
                if not free:
                    free.append(count)
                    count += 1
                self.slot[page] = free.pop()
            self.start.append([(page, self.slot[page]) for page in starts[k]])
            # a page dies after its last batch; its slot takes another page from the next batch on
            free.extend(self.slot[page] for page in pages if last[page] == k)
        self.used = used
        self.src = [self._src(r, q) for r, q in zip(rows, page_ids)]  # arena rows of each batch
        self.arena = aligned_empty((count * page_rows,) + tuple(store.shape[1:]))  # pages read straight into it
        self.arena_rows = _rows_of(self.arena)
        self.pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="compress-cache-reader")
        self.pending: dict = {}

    def _src(self, rows: np.ndarray, pages: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(pages, return_inverse=True)
        slots = np.array([self.slot[q] for q in unique.tolist()], dtype=np.int64)
        return slots[inverse] * self.p + rows - pages * self.p

    def gather(self, k: int, positions: np.ndarray, out: np.ndarray) -> None:
        for page, slot in self.start[k]:
            self.pending[page] = self.pool.submit(self._read, page, slot)
        for page in self.used[k]:
            done = self.pending.pop(page, None)
            if done is not None:
                done.result()  # a damaged block raises here
        _gather(self.arena_rows, self.src[k], out)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _read(self, page: int, slot: int) -> None:
        r, n = self.store.block_rows, self.store.n
        lo, hi = page * self.p, min((page + 1) * self.p, n)
        dest = self.arena[slot * self.p:slot * self.p + hi - lo]
        first, last = lo // r, (hi - 1) // r
        reader = self.store.reader()  # this reader thread's own handle
        if lo % r == 0 and (hi % r == 0 or hi == n):  # whole blocks: straight into the slot
            reader.read_blocks(first, last, out=dest, uncached=self.uncached)
            return
        block = reader.read_blocks(first, last, uncached=self.uncached)
        dest[:] = block[lo - first * r:hi - first * r]


class _Batches:
    """Builds batch k (its dataset indices and its images) into a buffer; reuses CPU buffers nobody holds."""

    def __init__(self, source, indices: np.ndarray, mine: list[np.ndarray], shape: tuple, pin: bool,
                 spare: queue.SimpleQueue):
        self.source, self.indices, self.mine = source, indices, mine
        self.shape, self.pin = shape, pin
        self.spare = spare  # the loader's: buffers carry over from one epoch to the next

    def buffer(self) -> torch.Tensor:
        if self.pin:  # torch's pinned allocator reuses a block only after the copies that read it are done
            return torch.empty(self.shape, dtype=torch.uint8, pin_memory=True)
        try:
            return self.spare.get_nowait()
        except queue.Empty:
            return torch.empty(self.shape, dtype=torch.uint8)

    def give_back(self, images: torch.Tensor) -> None:
        """`images` was yielded two batches ago: reuse it unless the consumer still holds it (the references
        counted are the caller's name, this parameter and getrefcount's own argument)."""
        if not self.pin and len(images) == self.shape[0] and sys.getrefcount(images) <= 3:
            self.spare.put(images)

    def build(self, k: int, buffer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.mine[k]
        full = len(positions) == self.shape[0]
        images = (buffer if buffer is not None else self.buffer()) if full else \
            torch.empty((len(positions),) + self.shape[1:], dtype=torch.uint8, pin_memory=self.pin)
        self.source.gather(k, positions, images.numpy())
        idx = torch.from_numpy(self.indices[positions])
        return (idx.pin_memory() if self.pin else idx), images  # pinned: the step copies it without waiting


def _inline(batches: _Batches, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches built when asked, in the consumer's thread (prefetch=0)."""
    try:
        for k in range(count):
            yield batches.build(k)
    finally:
        batches.source.close()


def _ahead(batches: _Batches, count: int, depth: int, builders: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields batches.build(k) for k < count, built about `depth` batches ahead by `builders` threads (thread i
    builds the batches k with k % builders == i, so each keeps its own queue and no batch waits for a lock).
    The threads stop when this generator is closed (a consumer that breaks early); an error is raised here
    when the consumer reaches the batch it stopped."""
    builders = max(1, min(builders, count))
    ready = [queue.Queue(maxsize=max(1, -(-depth // builders))) for _ in range(builders)]
    stop = threading.Event()

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work(i: int) -> None:
        try:
            for k in range(i, count, builders):
                if stop.is_set() or not put(ready[i], batches.build(k)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put(ready[i], e)

    threads = [threading.Thread(target=work, args=(i,), name=f"compress-cache-loader-{i}", daemon=True)
               for i in range(builders)]
    for thread in threads:
        thread.start()
    held: deque = deque()
    try:
        for k in range(count):
            q, thread = ready[k % builders], threads[k % builders]
            while True:
                try:
                    item = q.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not thread.is_alive() and q.empty():
                        raise RuntimeError("the loader thread ended without a batch or an error") from None
            if isinstance(item, BaseException):
                raise item
            yield item
            # the consumer is back; two batches on, only a consumer that keeps batches still refers to one
            held.append(item[1])
            del item
            if len(held) > 2:
                old = held.popleft()
                batches.give_back(old)
                del old
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        batches.source.close()
        while held:  # to the next epoch, those the consumer let go of
            batches.give_back(held.popleft())
