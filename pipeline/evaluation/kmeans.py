"""Seeded k-means of l2-normalised features, and nearest-centroid assignment, in bounded memory.

faiss (pipeline/evaluation/backend.py): faiss's own k-means (`faiss.Clustering`, as `faiss.Kmeans` runs it),
trained on the fp16 rows through an fp16 scalar-quantizer codec, which decodes one block of rows at a time;
the assignment index is on the GPU when faiss has one. The same seed, points and iterations give the same
centroids as `faiss.Kmeans` on the float32 values of those fp16 rows (tested), without that float32 copy.

torch (no faiss, or a GPU faiss cannot use): Lloyd's algorithm on the device, blockwise: k distinct random rows
(seeded) start it; each iteration assigns every row to its nearest centroid (L2) and moves each centroid to the
mean of its rows; an empty cluster takes half of the largest one (its centroid copied and both nudged apart by
1/1024, as faiss does). With `nredo` restarts the lowest sum of squared distances wins.

Both use every point (faiss's default subsampling to 256 points per centroid is off). Memory beyond the fp16
rows: one converted block, one (block x k) distance tile, the centroids and the (N,) assignment.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.evaluation import backend as backends
from pipeline.evaluation.backend import Backend
from pipeline.evaluation.features import DTYPE, unit_block, unit_rows
from pipeline.runtime.errors import CompressError

NORM_TOLERANCE = 2e-3  # fp16 rounding moves a unit row's norm by at most ~5e-4
SPLIT_EPS = 1 / 1024  # how far apart a split cluster's two centroids start (faiss's value)


def unit_fp16(x, be: Backend) -> np.ndarray:
    """`x` as C-contiguous fp16 rows of unit norm: `x` itself when it already is (the evaluation's features),
    else a normalised fp16 copy written block by block."""
    n, dim = x.shape
    rows = be.block_rows(dim)
    if isinstance(x, np.ndarray) and x.dtype == DTYPE and x.flags.c_contiguous and _unit(x, rows):
        return x
    out = np.empty((n, dim), dtype=DTYPE)
    for lo in range(0, n, rows):
        out[lo:lo + rows] = unit_block(x, lo, min(lo + rows, n)).numpy()
    return out


def _unit(x: np.ndarray, rows: int) -> bool:
    for lo in range(0, len(x), rows):
        norms = np.linalg.norm(np.asarray(x[lo:lo + rows], dtype=np.float32), axis=1)
        if np.abs(norms - 1).max(initial=0) > NORM_TOLERANCE:
            return False
    return True


def kmeans(train_x, k: int, niter: int = 20, seed: int = 0, nredo: int = 1,
           device: torch.device | str = "cpu", be: Backend | None = None) -> np.ndarray:
    """(k, D) float32 centroids of the l2-normalised rows of `train_x` (numpy or torch, fp16 or float32); every
    point is used, the run is seeded. niter: Lloyd iterations (paper: 20); nredo: restarts, best kept."""
    be = be or backends.choose(device)
    n = len(train_x)
    if not 1 <= k <= n:
        raise CompressError(f"cannot make {k} clusters of {n} train points; use --ca-clusters between 1 and {n}")
    if be.library == "faiss":
        return _faiss_kmeans(unit_fp16(train_x, be), k, niter, seed, nredo, be)
    return _torch_kmeans(train_x, k, niter, seed, nredo, be)


def _faiss_kmeans(x16: np.ndarray, k: int, niter: int, seed: int, nredo: int, be: Backend) -> np.ndarray:
    faiss = backends.faiss
    n, dim = x16.shape
    cp = faiss.ClusteringParameters()
    cp.niter, cp.seed, cp.nredo, cp.verbose = niter, seed, nredo, False
    cp.max_points_per_centroid, cp.min_points_per_centroid = n // k + 1, 1  # every point, no warning
    cp.decode_block_size = be.block_rows(dim)
    clustering = faiss.Clustering(dim, k, cp)
    codec = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)  # fp16 rows are its codes
    index = faiss.IndexFlatL2(dim)
    if be.gpu:
        index = faiss.index_cpu_to_gpu(be.gpu_resources(), be.device.index, index)
    clustering.train_encoded(x16.view(np.uint8), codec, index)  # (n, 2D) bytes: a view, no copy
    return faiss.vector_to_array(clustering.centroids).reshape(k, dim).copy()


def _nearest(block: torch.Tensor, centroids: torch.Tensor, c_sq: torch.Tensor):
    """(squared L2 distance, id) of each row's nearest centroid."""
    d = torch.addmm(c_sq[None, :], block, centroids.T, alpha=-2)  # |c|^2 - 2 x.c, (rows, k)
    best, ids = d.min(1)
    return (best + (block * block).sum(1)).clamp_min_(0), ids


def _torch_kmeans(x, k: int, niter: int, seed: int, nredo: int, be: Backend) -> np.ndarray:
    n, dim = x.shape
    rows = be.block_rows(dim, max(dim, k))
    best_obj, best = float("inf"), None
    for redo in range(nredo):
        g = torch.Generator().manual_seed(seed + redo)
        centroids = unit_rows(x, torch.randperm(n, generator=g)[:k].numpy(), be.device)
        obj = float("inf")
        for _ in range(niter):
            sums = torch.zeros((k, dim), dtype=torch.float32, device=be.device)
            counts = torch.zeros(k, dtype=torch.int64, device=be.device)
            obj, c_sq = 0.0, (centroids * centroids).sum(1)
            for lo in range(0, n, rows):
                block = unit_block(x, lo, min(lo + rows, n), be.device)
                dist, ids = _nearest(block, centroids, c_sq)
                sums.index_add_(0, ids, block)
                counts += torch.bincount(ids, minlength=k)
                obj += float(dist.sum())
            centroids = sums / counts.clamp_min(1)[:, None].float()
            _split_empty(centroids, counts)
        if obj < best_obj:
            best_obj, best = obj, centroids
    return best.cpu().numpy()


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor) -> None:
    """Give every empty cluster half of the currently largest one, in place."""
    sign = torch.ones(centroids.shape[1], device=centroids.device)
    sign[1::2] = -1
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        big = int(torch.argmax(counts))
        centroids[empty] = centroids[big] * (1 + SPLIT_EPS * sign)
        centroids[big] = centroids[big] * (1 - SPLIT_EPS * sign)
        counts[empty] = counts[big] // 2
        counts[big] -= counts[empty]


def assign(x, centroids: np.ndarray, device: torch.device | str = "cpu", be: Backend | None = None) -> np.ndarray:
    """(N,) index of the nearest centroid (L2, as k-means itself assigns) of every l2-normalised row, in blocks."""
    be = be or backends.choose(device)
    k, dim = centroids.shape
    rows = be.block_rows(dim, max(dim, k))
    out = np.empty(len(x), dtype=np.int64)
    if be.library == "faiss":
        faiss = backends.faiss
        index = faiss.IndexFlatL2(dim)
        if be.gpu:
            index = faiss.index_cpu_to_gpu(be.gpu_resources(), be.device.index, index)
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        for lo in range(0, len(x), rows):
            out[lo:lo + rows] = index.search(unit_block(x, lo, min(lo + rows, len(x))).numpy(), 1)[1][:, 0]
        return out
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(be.device)
    c_sq = (c * c).sum(1)
    for lo in range(0, len(x), rows):
        out[lo:lo + rows] = _nearest(unit_block(x, lo, min(lo + rows, len(x)), be.device), c, c_sq)[1].cpu().numpy()
    return out
