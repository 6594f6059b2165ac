"""Exact k-nearest-neighbour search by cosine, in blocks: what NN, kNN, agreement and the retrieval grid use.

Train rows are read one block at a time (converted to l2-normalised float32 on the computing device), every
query block is scored against it, and each query keeps a running top-k, merged after every block:

    for each train block T (Tb x D):          # converted once
        for each query block Q (Qb x D):
            top-k of Q . T^T (Qb x Tb)       # faiss.knn / faiss.knn_gpu, or torch matmul + topk
            merge with Q's running top-k     # stable: on equal similarity the lower train row wins

Memory beyond the fp16 inputs: one train block, one query block and one similarity tile (each at most the
backend's block budget, pipeline/evaluation/backend.py) and the (Q, k) results; never a (Q x N) matrix, a
float32 copy of the train features, or a faiss index holding them. The results equal a single exact search
up to the order of exactly tied similarities.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from pipeline.evaluation import backend as backends
from pipeline.evaluation.backend import Backend
from pipeline.evaluation.features import unit_block


def _faiss_block(be: Backend, q: torch.Tensor, t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss's exact search of one (query block, train block) pair; both are host arrays, even for faiss-gpu."""
    faiss = backends.faiss
    if be.gpu:
        sims, ids = faiss.knn_gpu(be.gpu_resources(), q.numpy(), t.numpy(), k, metric=faiss.METRIC_INNER_PRODUCT,
                                  device=be.device.index)
    else:
        sims, ids = faiss.knn(q.numpy(), t.numpy(), k, metric=faiss.METRIC_INNER_PRODUCT)
    return torch.from_numpy(sims), torch.from_numpy(ids)


def _torch_block(q: torch.Tensor, t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(q @ t.T, k, dim=1)  # the (Qb, Tb) tile, then its k best, best first


def merge(sims: torch.Tensor, ids: torch.Tensor, new_sims: torch.Tensor, new_ids: torch.Tensor, k: int):
    """The k best of the running (Q, k') results and a new block's; on ties the running ones (lower rows) win."""
    s, i = torch.cat([sims, new_sims], 1), torch.cat([ids, new_ids], 1)
    s, order = torch.sort(s, dim=1, descending=True, stable=True)
    return s[:, :k], torch.gather(i, 1, order[:, :k])


@contextmanager
def fp32_products():
    """Full float32 products on a GPU even where TF32 was switched on elsewhere (it would reorder near-ties)."""
    matmul = torch.backends.cuda.matmul
    before, matmul.allow_tf32 = matmul.allow_tf32, False
    try:
        yield
    finally:
        matmul.allow_tf32 = before


def search(train_x, queries, k: int, device: torch.device | str = "cpu", block_rows: int | None = None,
           be: Backend | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sims float32, ids int64), each (Q, min(k, N)): the k most cosine-similar train rows of every query, best
    first. `train_x` (N, D) and `queries` (Q, D): numpy or torch, fp16 or float32, normalised or not.
    `device` picks the backend (pipeline/evaluation/backend.py); `block_rows` (default: the backend's budget)
    bounds the rows converted at once."""
    be = be or backends.choose(device)
    n, q_count, dim = len(train_x), len(queries), train_x.shape[1]
    k = min(k, n)
    if q_count == 0 or n == 0:
        return np.empty((q_count, k), np.float32), np.empty((q_count, k), np.int64)
    work = be.device if be.library == "torch" else torch.device("cpu")  # faiss takes host arrays
    t_rows = block_rows or be.block_rows(dim)
    # torch materialises the (Qb, Tb) tile: keep it within the budget as well; faiss tiles internally
    q_rows = block_rows or (t_rows if be.library == "faiss" else be.block_rows(dim, t_rows))
    sims = torch.empty((q_count, 0), dtype=torch.float32, device=work)
    ids = torch.empty((q_count, 0), dtype=torch.int64, device=work)
    with fp32_products():
        for t_lo in range(0, n, t_rows):
            t = unit_block(train_x, t_lo, min(t_lo + t_rows, n), work)
            kb = min(k, len(t))
            parts = []
            for q_lo in range(0, q_count, q_rows):
                q = unit_block(queries, q_lo, min(q_lo + q_rows, q_count), work)
                s, i = _faiss_block(be, q, t, kb) if be.library == "faiss" else _torch_block(q, t, kb)
                rows = slice(q_lo, q_lo + len(q))
                parts.append(merge(sims[rows], ids[rows], s, i + t_lo, k))
            sims, ids = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return sims.cpu().numpy(), ids.cpu().numpy()
