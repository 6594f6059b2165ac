"""Cluster matching under both scores, against hand-built cases and a brute-force search over permutations."""
import itertools

import numpy as np
import pytest

from pipeline.evaluation.cluster_assignment import (UNMATCHED, CAConfig, cluster_assignment, contingency, kmeans,
                                         mapped_accuracy, match)
from pipeline.runtime.errors import CompressError


def _brute_force(clusters, labels, k, c, score):
    """Best one-to-one map by trying every injection (k <= c) of clusters into classes."""
    table = contingency(clusters, labels, k, c).astype(float)
    sizes = table.sum(1, keepdims=True)
    if score == "precision":
        table = np.divide(table, sizes, out=np.zeros_like(table), where=sizes > 0)
    best = max(itertools.permutations(range(c), k), key=lambda p: sum(table[i, p[i]] for i in range(k)))
    return best, sum(table[i, best[i]] for i in range(k))


# Cluster 0: 10 points, 7 of class 0 and 3 of class 1. Cluster 1: 2 points, both class 0.
# Cluster 2: 5 points of class 2. Cluster 3: empty.
CLUSTERS = np.array([0] * 10 + [1] * 2 + [2] * 5)
LABELS = np.array([0] * 7 + [1] * 3 + [0, 0] + [2] * 5)


def test_count_and_precision_disagree_as_designed():
    count = match(CLUSTERS, LABELS, 4, 3, "count")
    precision = match(CLUSTERS, LABELS, 4, 3, "precision")
    assert list(count[:3]) == [0, 1, 2]  # 7 + 0 + 5 = 12 beats 3 + 2 + 5 = 10
    assert list(precision[:3]) == [1, 0, 2]  # 0.3 + 1.0 + 1.0 beats 0.7 + 0.0 + 1.0
    assert count[3] == UNMATCHED and precision[3] == UNMATCHED  # the empty cluster maps to nothing


def test_count_prefers_big_clusters():
    clusters = np.array([0] * 10 + [1] * 2)
    labels = np.array([0] * 7 + [1] * 3 + [0, 0])
    assert list(match(clusters, labels, 2, 2, "count")) == [0, 1]  # 7 + 0 > 3 + 2
    assert list(match(clusters, labels, 2, 2, "precision")) == [1, 0]  # 0.3 + 1.0 > 0.7 + 0.0
    val_c, val_y = np.array([0, 0, 1]), np.array([0, 1, 0])
    assert mapped_accuracy(val_c, val_y, match(clusters, labels, 2, 2, "count")) == pytest.approx(100 / 3)
    assert mapped_accuracy(val_c, val_y, match(clusters, labels, 2, 2, "precision")) == pytest.approx(200 / 3)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("score", ["precision", "count"])
def test_hungarian_is_optimal_with_an_empty_cluster(seed, score):
    rng = np.random.default_rng(seed)
    k, c = 4, 5
    clusters = rng.integers(0, k - 1, 60)  # cluster k-1 is empty
    labels = rng.integers(0, c, 60)
    mapping = match(clusters, labels, k, c, score)
    _, best = _brute_force(clusters, labels, k, c, score)
    table = contingency(clusters, labels, k, c).astype(float)
    if score == "precision":
        table /= np.maximum(table.sum(1, keepdims=True), 1)
    got = sum(table[i, mapping[i]] for i in range(k) if mapping[i] != UNMATCHED)
    assert got == pytest.approx(best)
    assert mapping[k - 1] == UNMATCHED
    matched = mapping[mapping != UNMATCHED]
    assert len(set(matched)) == len(matched)  # one-to-one
    # a val point that lands in the empty cluster is wrong, whatever its label
    assert mapped_accuracy(np.array([k - 1] * c), np.arange(c), mapping) == 0.0


def test_more_clusters_than_classes_leaves_clusters_unmatched():
    clusters = np.array([0, 0, 1, 1, 2, 2])
    labels = np.array([0, 0, 1, 1, 1, 0])
    mapping = match(clusters, labels, 3, 2, "count")
    assert (mapping == UNMATCHED).sum() == 1 and set(mapping[mapping != UNMATCHED]) == {0, 1}


def test_kmeans_is_seeded_and_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:4] * 10
    y = rng.integers(0, 4, 400)
    x = (centers[y] + rng.normal(scale=0.3, size=(400, 8))).astype(np.float32)
    np.testing.assert_array_equal(kmeans(x, 4, seed=3), kmeans(x, 4, seed=3))
    res = cluster_assignment(x[:300], y[:300], x[300:], y[300:], 4, CAConfig(seed=0, nredo=5))
    assert res["precision"] == 100.0 and res["count"] == 100.0 and res["reported"] == res["precision"]


def test_bad_inputs_are_refused():
    with pytest.raises(CompressError, match="clusters"):
        kmeans(np.ones((3, 2), np.float32), 5)
    with pytest.raises(CompressError, match="score"):
        match(CLUSTERS, LABELS, 4, 3, "f1")
