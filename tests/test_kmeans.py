"""k-means in bounded memory (pipeline/evaluation/kmeans.py): the faiss path is faiss.Kmeans on the fp16 values
without their float32 copy; the torch path (no faiss) is Lloyd's algorithm, checked against a plain one."""
import faiss
import numpy as np
import pytest
import torch

from pipeline.evaluation import backend
from pipeline.evaluation.cluster_assignment import CAConfig, cluster_assignment
from pipeline.evaluation.kmeans import _split_empty, assign, kmeans, unit_fp16


def _unit16(n=2000, d=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _blobs(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    return (np.eye(8)[:4][y] * 10 + rng.normal(scale=0.3, size=(n, 8))).astype(np.float32), y


def test_faiss_path_is_faiss_kmeans_on_the_fp16_values(monkeypatch):
    x16 = _unit16()
    monkeypatch.setattr(backend, "CPU_BLOCK_BYTES", 4 * 16 * 300)  # decoded 300 rows at a time
    got = kmeans(x16, 30, niter=10, seed=4, nredo=2)
    km = faiss.Kmeans(16, 30, niter=10, seed=4, nredo=2, verbose=False, max_points_per_centroid=2000 // 30 + 1,
                      min_points_per_centroid=1)
    km.train(x16.astype(np.float32))
    np.testing.assert_allclose(got, km.centroids, atol=1e-6)
    assert unit_fp16(x16, backend.choose("cpu")) is x16  # already unit fp16 rows: used in place, not copied


def test_float32_or_unnormalised_input_is_normalised_first():
    x16 = _unit16(seed=1)
    scaled = x16.astype(np.float32) * np.random.default_rng(2).uniform(0.5, 4, (len(x16), 1)).astype(np.float32)
    np.testing.assert_allclose(kmeans(scaled, 8, seed=1), kmeans(x16, 8, seed=1), atol=2e-3)


def _plain_lloyd(x, init, niter):
    c = x[init].copy()
    for _ in range(niter):
        a = ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
        c = np.stack([x[a == j].mean(0) for j in range(len(c))])
    return c


def test_torch_lloyd_matches_a_plain_one(monkeypatch):
    monkeypatch.setattr(backend, "faiss", None)
    monkeypatch.setattr(backend, "CPU_BLOCK_BYTES", 4 * 16 * 128)
    x16 = _unit16(n=600, seed=3)
    x = x16.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = torch.randperm(600, generator=torch.Generator().manual_seed(5))[:6].numpy()  # the seed's first draw
    got = kmeans(x16, 6, niter=8, seed=5)
    np.testing.assert_allclose(got, _plain_lloyd(x, init, 8), atol=1e-5)
    np.testing.assert_array_equal(kmeans(x16, 6, niter=8, seed=5), got)  # seeded


def test_torch_and_faiss_assign_agree():
    x16 = _unit16(seed=6)
    centroids = kmeans(x16, 12, seed=0)
    cpu = torch.device("cpu")
    np.testing.assert_array_equal(assign(x16, centroids, be=backend.Backend("torch", cpu)),
                                  assign(x16, centroids, be=backend.Backend("faiss", cpu)))


def test_an_empty_cluster_takes_half_of_the_largest():
    c = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    counts = torch.tensor([3, 0, 8])
    _split_empty(c, counts)
    assert counts.tolist() == [3, 4, 4]
    assert torch.allclose(c[1], c[2], atol=0.01) and not torch.equal(c[1], c[2])


@pytest.mark.parametrize("library", ["faiss", "torch"])
def test_ca_recovers_separated_blobs_on_either_library(library, monkeypatch):
    if library == "torch":
        monkeypatch.setattr(backend, "faiss", None)
    x, y = _blobs()
    res = cluster_assignment(x[:300].astype(np.float16), y[:300], x[300:], y[300:], 4, CAConfig(seed=0, nredo=5))
    assert res["precision"] == 100.0 and res["count"] == 100.0 and res["library"] == f"{library}-cpu"
