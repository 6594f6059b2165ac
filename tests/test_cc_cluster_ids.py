"""CC's cluster ids come from the cache's own rows without a float32 copy of the whole cache, and are the ids a
float32 copy would give; more clusters than training images is refused in train's own terms."""
import numpy as np
import pytest
import torch

from pipeline.evaluation.cluster_assignment import assign, kmeans
from pipeline.methods.cc import cluster_ids


def _rows(n: int, views: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, views, dim, generator=g), dim=-1)
    return x.half()


def _float32_route(view0: torch.Tensor, train: np.ndarray, k: int, seed: int) -> np.ndarray:
    x = view0.float().numpy()
    return assign(x, kmeans(x[train], k, seed=seed))


def test_ids_equal_those_of_a_float32_copy_for_single_and_multi_view_caches():
    rows = _rows(700, 3, 24, seed=0)
    train = np.sort(np.random.default_rng(1).choice(700, 500, replace=False))
    multi = cluster_ids(rows, train, k=12, seed=3).numpy()
    single = cluster_ids(rows[:, 0].contiguous(), train, k=12, seed=3).numpy()
    expected = _float32_route(rows[:, 0], train, 12, 3)
    assert np.array_equal(multi, expected)
    assert np.array_equal(single, expected)
    assert len(np.unique(multi)) > 6  # the clustering did something: not every row in one or two clusters


def test_the_cache_rows_are_not_changed_and_ids_depend_on_the_seed():
    rows = _rows(400, 1, 16, seed=5)[:, 0]
    before = rows.clone()
    train = np.arange(300)
    a = cluster_ids(rows, train, k=8, seed=0)
    b = cluster_ids(rows, train, k=8, seed=1)
    assert torch.equal(rows, before)
    assert a.dtype == torch.int64 and a.shape == (400,)
    assert not torch.equal(a, b)


def test_more_clusters_than_training_images_is_refused_naming_the_train_option():
    from pipeline.methods import DataInfo, build_method
    from pipeline.runtime.errors import CompressError
    from tests.tiny_student import TinyStudent
    data = DataInfo(num_items=10, train_indices=np.arange(8), num_classes=2,
                    teacher_rows=torch.nn.functional.normalize(torch.randn(10, 4), dim=1))
    with pytest.raises(CompressError, match=r"--clusters 9 is more than the 8 training images"):
        build_method("cc", TinyStudent(), teacher_dim=4, data=data, hp={"clusters": 9, "seed": 0})
    method = build_method("cc", TinyStudent(), teacher_dim=4, data=data, hp={"clusters": 8, "seed": 0})
    assert method.ids.shape == (10,) and (method.ids >= 0).all()
