"""The one fp16 feature matrix: train/val as views, interleaved splits reordered once, the stored copy in store
order read and written in blocks, the memory-mapped variant, and the stage on it agreeing with plain arrays."""
import numpy as np
import pytest

from pipeline.evaluation import features
from pipeline.evaluation.features import Layout
from pipeline.runtime.errors import CompressError


def _blocks(z, step):
    return ((lo, z[lo:lo + step]) for lo in range(0, len(z), step))


def test_contiguous_splits_are_views_of_the_store_order():
    layout = Layout.of(np.arange(6, 10), np.arange(0, 6), 10)  # val first, then train
    z = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    x = features.fill(_blocks(z, 3), layout)
    assert layout.position is None and x.dtype == np.float16
    np.testing.assert_array_equal(x, z.astype(np.float16))  # store order, rounded once
    assert np.shares_memory(layout.train_rows(x), x) and np.shares_memory(layout.val_rows(x), x)
    np.testing.assert_array_equal(layout.train_rows(x), x[6:10])


def test_interleaved_splits_are_reordered_once_train_first():
    split = np.array([0, 1, 0, 0, 1, 0, 1, 0])
    train, val = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    layout = Layout.of(train, val, 8)
    z = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    x = features.fill(_blocks(z, 3), layout)
    np.testing.assert_array_equal(layout.train_rows(x), z[train])  # views, in store order within each split
    np.testing.assert_array_equal(layout.val_rows(x), z[val])
    assert np.shares_memory(layout.train_rows(x), x)
    np.testing.assert_array_equal(x[layout.matrix_rows([4, 7])], z[[4, 7]])


def test_the_stored_copy_is_in_store_order_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "IO_ROWS_BYTES", 2 * 3 * 2)  # two rows per read and write
    split = np.array([1, 0, 0, 1, 0, 1, 0])
    layout = Layout.of(np.flatnonzero(split == 0), np.flatnonzero(split == 1), 7)
    z = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float16)
    x = features.fill(_blocks(z, 2), layout)
    features.save(tmp_path / "f.npy", x, layout)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), z)  # readers see the store's order
    np.testing.assert_array_equal(features.load(tmp_path / "f.npy", layout), x)
    other = Layout.of(np.arange(3), np.arange(3, 5), 5)
    assert features.load(tmp_path / "f.npy", other) is None  # another number of rows: recompute, never reuse


def test_memmap_matrix_leaves_nothing_behind(tmp_path):
    layout = Layout.of(np.array([0, 2]), np.array([1, 3]), 4)
    z = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    x = features.fill(_blocks(z, 4), layout, memmap_dir=tmp_path / "scratch")
    assert isinstance(x, np.memmap) and list((tmp_path / "scratch").iterdir()) == []
    np.testing.assert_array_equal(layout.val_rows(x), z[[1, 3]].astype(np.float16))


def test_splits_that_miss_rows_are_refused():
    with pytest.raises(CompressError, match="cover the 5 images"):
        Layout.of(np.array([0, 1]), np.array([3, 4]), 5)


def test_the_stage_on_the_fp16_matrix_equals_plain_arrays(tmp_path):
    """`eval` on an interleaved store (views of one fp16 matrix, blockwise protocols) gives the numbers that
    the protocols give on plain float32 copies x[train], x[val] of the same stored features."""
    from pipeline.data.imagestore import write_image_store
    from pipeline.evaluation.scoring import evaluate_features
    from stages.evaluate import EvaluateConfig, evaluate
    rng = np.random.default_rng(0)
    n = 60
    labels = np.arange(n) % 3
    images = (rng.integers(0, 60, (n, 8, 8, 1)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    split = (np.arange(n) % 4 == 3).astype(np.uint8)
    write_image_store(tmp_path / "data", images, labels, split, [f"x{i}" for i in range(n)], dataset="tiny",
                      classes=["a", "b", "c"], source="test")
    m = evaluate(EvaluateConfig(data=tmp_path / "data", out=tmp_path / "r.json", random_init="resnet18",
                                small_input=True, probe_epochs=3, batch_size=16, device="cpu"))
    x = np.load(tmp_path / "r.features.npy").astype(np.float32)
    train, val = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    ref = evaluate_features(x[train], labels[train], x[val], labels[val], 3, probe_epochs=3)
    for key in ("nn", "knn20", "linear", "ca", "ca_count"):
        assert m[key] == pytest.approx(ref[key]), key
    # the memory-mapped matrix, read back from the stored copy: the same numbers, no scratch file left
    mapped = evaluate(EvaluateConfig(data=tmp_path / "data", out=tmp_path / "r.json", random_init="resnet18",
                                     small_input=True, probe_epochs=3, batch_size=16, device="cpu",
                                     features_memmap=True))
    assert all(mapped[key] == m[key] for key in ("nn", "knn20", "linear", "ca"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "r.features.npy", "r.features.npy.key", "r.json"]
