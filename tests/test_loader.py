"""BatchLoader: seeded order independent of world size, in-memory and paged reads agree, eval shards."""
import numpy as np
import pytest
import torch

from pipeline.data.imagestore import ImageStore, write_image_store
from pipeline.data.loader import BatchLoader


@pytest.fixture(scope="module")
def store(module_dir):
    out = module_dir
    n = 100
    images = (np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8))
    split = (np.arange(n) % 5 == 4).astype(np.uint8)
    write_image_store(out, images, np.arange(n) % 3, split, [f"x/{i}" for i in range(n)], dataset="t",
                      classes=["a", "b", "c"], source="test")
    return ImageStore(out)


def _batches(loader, epoch):
    return [(i.clone(), x.clone()) for i, x in loader.epoch(epoch)]


@pytest.mark.parametrize("in_memory", [True, False])
def test_batches_carry_their_indices_and_a_seed_reproduces_them(store, in_memory):
    idx = store.indices("train")
    kw = dict(seed=7, in_memory=in_memory, page_rows=8, window_pages=2)
    a = _batches(BatchLoader(store, idx, 16, **kw), 0)
    b = _batches(BatchLoader(store, idx, 16, **kw), 0)
    c = _batches(BatchLoader(store, idx, 16, **kw), 1)
    assert len(a) == len(idx) // 16
    for (i, x), (j, y) in zip(a, b):
        assert torch.equal(i, j) and torch.equal(x, y)
        assert x.dtype == torch.uint8 and torch.equal(x[:, 0, 0, 0].long(), i)  # pixel value = row index
    assert not all(torch.equal(i, j) for (i, _), (j, _) in zip(a, c))
    seen = torch.cat([i for i, _ in a]).numpy()
    assert len(set(seen)) == len(seen) and set(seen) <= set(idx)


def test_paged_order_reads_pages_contiguously(store):
    idx = np.arange(store.n)
    order = BatchLoader(store, idx, 10, seed=0, in_memory=False, page_rows=10, window_pages=2).order(0)
    assert sorted(order) == list(idx)
    for w in range(0, 100, 20):  # each window of 2 pages holds exactly two whole pages
        pages = set(order[w:w + 20] // 10)
        assert len(pages) == 2


def test_automatic_mode_pages_a_store_larger_than_the_limit(store):
    assert BatchLoader(store, store.indices("train"), 8, seed=0).in_memory
    assert not BatchLoader(store, store.indices("train"), 8, seed=0, memory_limit=100).in_memory


@pytest.mark.parametrize("in_memory", [True, False])
def test_ranks_split_each_global_batch_and_order_is_independent_of_world_size(store, in_memory):
    idx = store.indices("train")
    kw = dict(seed=3, in_memory=in_memory, page_rows=8)
    one = [i for i, _ in BatchLoader(store, idx, 8, **kw).epoch(2)]
    two = [[i for i, _ in BatchLoader(store, idx, 4, rank=r, world_size=2, **kw).epoch(2)] for r in range(2)]
    for b, full in enumerate(one):
        assert torch.equal(torch.cat([two[0][b], two[1][b]]), full)


def test_resume_from_a_batch(store):
    loader = BatchLoader(store, store.indices("train"), 8, seed=1, in_memory=False, page_rows=8)
    full = [i for i, _ in loader.epoch(0)]
    rest = [i for i, _ in loader.epoch(0, start_batch=3)]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], rest))
