"""NN and weighted kNN against a numpy brute force on small random data."""
import numpy as np
import pytest
import torch

from pipeline.evaluation.knn import KNNConfig, knn_classify, search, vote


def _data(seed=0, n=300, q=80, d=16, c=7):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, c, n),
            rng.normal(size=(q, d)).astype(np.float32), c)


def _brute(train_x, train_y, queries, c, k, tau):
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = b.astype(np.float64) @ a.T.astype(np.float64)  # (Q, N)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    nn = train_y[order[:, 0]]
    scores = np.zeros((len(b), c))
    for i in range(len(b)):
        for j in order[i]:
            scores[i, train_y[j]] += np.exp(sims[i, j] / tau)
    return nn, scores.argmax(1), order


@pytest.mark.parametrize("k,tau", [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_matches_brute_force(k, tau):
    train_x, train_y, queries, c = _data()
    nn, knn = knn_classify(train_x, train_y, queries, c, KNNConfig(k=k, tau=tau, block_rows=17))
    ref_nn, ref_knn, _ = _brute(train_x, train_y, queries, c, k, tau)
    np.testing.assert_array_equal(nn, ref_nn)
    np.testing.assert_array_equal(knn, ref_knn)
    if k == 1:
        np.testing.assert_array_equal(nn, knn)


def test_cosine_ignores_scale_and_accepts_torch():
    train_x, train_y, queries, c = _data(1)
    scaled = train_x * np.random.default_rng(2).uniform(0.1, 10, (len(train_x), 1)).astype(np.float32)
    a = knn_classify(train_x, train_y, queries, c)
    b = knn_classify(torch.from_numpy(scaled).half(), torch.from_numpy(train_y), torch.from_numpy(queries), c)
    np.testing.assert_array_equal(a[0], b[0])


def test_search_neighbours_are_exact_and_chunked():
    train_x, _, queries, _ = _data(3)
    sims, ids = search(train_x, queries, 4, block_rows=7)
    *_, order = _brute(train_x, np.zeros(len(train_x), int), queries, 1, 4, 1.0)
    np.testing.assert_array_equal(ids, order)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_vote_temperature_changes_the_winner():
    # one very close neighbour of class 0 against three mediocre ones of class 1
    sims = np.array([[0.9, 0.6, 0.6, 0.6]], dtype=np.float32)
    labels = np.array([[0, 1, 1, 1]])
    assert vote(sims, labels, 2, tau=0.07)[0] == 0  # exp(0.9/.07) > 3 exp(0.6/.07)
    assert vote(sims, labels, 2, tau=10.0)[0] == 1  # near-uniform weights: majority wins
