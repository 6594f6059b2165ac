"""The blockwise search (pipeline/evaluation/search.py) against one plain exact search, on every backend CPUs run:
faiss, and torch when faiss is absent; fp16 and float32 inputs; ties; and tiles that stay within the budget."""
import numpy as np
import pytest
import torch

from pipeline.evaluation import backend, search as search_module
from pipeline.evaluation.search import search


def _data(seed=0, n=700, q=90, d=24):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(q, d)).astype(np.float32)


def _plain(train_x, queries, k):
    """The reference: the whole (Q, N) cosine matrix in float64, stable order (lower row first on ties)."""
    a = np.asarray(train_x, np.float64)
    b = np.asarray(queries, np.float64)
    sims = (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


@pytest.fixture(params=["faiss", "torch"])
def library(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setattr(backend, "faiss", None)  # as if faiss were not installed
    assert backend.choose("cpu").library == request.param
    return request.param


@pytest.mark.parametrize("block_rows", [None, 1, 64, 699])
def test_blocks_give_the_plain_search(library, block_rows):
    train_x, queries = _data()
    sims, ids = search(train_x, queries, 20, block_rows=block_rows)
    ref_sims, ref_ids = _plain(train_x, queries, 20)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_fp16_rows_torch_input_and_k_above_n(library):
    train_x, queries = _data(1, n=50)
    x16, q16 = train_x.astype(np.float16), queries.astype(np.float16)
    _, ids = search(torch.from_numpy(x16), q16, 80, block_rows=16)
    assert ids.shape == (len(queries), 50)  # k is capped at the train rows
    np.testing.assert_array_equal(ids, _plain(x16, q16, 50)[1])  # the fp16 values, widened, are what is searched


def test_ties_go_to_the_lower_train_row_across_blocks(library):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(5, 8)).astype(np.float32)
    train_x = np.concatenate([base, 4 * base, base, 0.5 * base])  # every direction four times (exact scales)
    _, ids = search(train_x, base, 4, block_rows=3)  # the copies of one row sit in different blocks
    np.testing.assert_array_equal(ids, np.arange(5)[:, None] + 5 * np.arange(4)[None, :])


def test_torch_tiles_stay_within_the_budget(monkeypatch):
    monkeypatch.setattr(backend, "faiss", None)
    monkeypatch.setattr(backend, "CPU_BLOCK_BYTES", 4 * 24 * 100)  # 100 rows of 24 floats
    seen = []
    real = search_module._torch_block

    def recording(q, t, k):
        seen.append((len(q), len(t)))
        return real(q, t, k)
    monkeypatch.setattr(search_module, "_torch_block", recording)
    train_x, queries = _data(3)
    _, ids = search(train_x, queries, 5)
    np.testing.assert_array_equal(ids, _plain(train_x, queries, 5)[1])
    assert max(t for _, t in seen) == 100 and max(q * t for q, t in seen) <= 100 * 24  # never (Q x N)


def test_backend_choice():
    assert backend.choose("cpu") == backend.Backend("faiss", torch.device("cpu"))
    if backend.faiss_gpus() == 0:  # faiss-cpu: a GPU is used through torch, not left idle
        assert backend.choose("cuda:0") == backend.Backend("torch", torch.device("cuda:0"))
