"""BatchLoader at scale (issue 17): the read-ahead thread changes no batch, resumes mid-epoch, refuses damaged
blocks and stops with its consumer; the in-RAM copy is one per node; blocks are read directly or through h5py
alike; --loader-memory is checked."""
import threading

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.data.imagestore import ImageStore
from pipeline.data.loader import BatchLoader, memory_budget
from pipeline.data.nodecopy import Node
from pipeline.runtime.errors import CompressError
from pipeline.runtime.memory import node_ram
from stages.cli import main
from tests.store_fixtures import random_store

N = 600  # at 64 px (12 KiB rows) 85 rows per block: 8 blocks


def _write(path, n=N, shape=(64, 64, 3)):
    return random_store(path, n, shape, classes=3, test_every=7)


@pytest.fixture(scope="module")
def stored(module_dir):
    path = module_dir
    return _write(path), path


def _all(batches):
    return [(i.clone(), x.clone()) for i, x in batches]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(i, j) and torch.equal(x, y) for (i, x), (j, y) in zip(a, b))


def _loader(store, **kw):
    kw = {"seed": 5, "page_rows": 85, "window_pages": 2, "pin_memory": False, **kw}
    return BatchLoader(store, store.indices("train"), 32, **kw)


@pytest.mark.parametrize("in_memory", [True, False])
def test_read_ahead_yields_the_batches_built_in_order_and_resumes_inside_an_epoch(stored, in_memory):
    images, path = stored
    store = ImageStore(path)
    ahead = _all(_loader(store, in_memory=in_memory).epoch(3))
    inline = _all(_loader(store, in_memory=in_memory, prefetch=0).epoch(3))
    assert _same(ahead, inline) and len(ahead) == len(store.indices("train")) // 32
    for i, x in ahead:  # the pixels are the store's rows of the indices carried
        assert np.array_equal(x.numpy(), images[i.numpy()])
    assert _same(_all(_loader(store, in_memory=in_memory).epoch(3, start_batch=5)), ahead[5:])
    two = [_all(_loader(store, in_memory=in_memory, rank=r, world_size=2).epoch(3)) for r in range(2)]
    one = _all(BatchLoader(store, store.indices("train"), 64, seed=5, page_rows=85, window_pages=2,
                           in_memory=in_memory, pin_memory=False).epoch(3))
    for b, (i, x) in enumerate(one):
        assert torch.equal(torch.cat([two[0][b][0], two[1][b][0]]), i)
        assert torch.equal(torch.cat([two[0][b][1], two[1][b][1]]), x)


def test_batches_a_consumer_keeps_are_not_overwritten(stored):
    images, path = stored
    kept = list(_loader(ImageStore(path), in_memory=True).epoch(0))  # buffers are reused only when let go
    assert len({x.data_ptr() for _, x in kept}) == len(kept)
    assert all(np.array_equal(x.numpy(), images[i.numpy()]) for i, x in kept)


def test_pages_are_whole_blocks_and_the_order_is_a_function_of_seed_and_epoch(stored):
    _, path = stored
    store = ImageStore(path)
    loader = BatchLoader(store, store.indices("train"), 32, seed=1, in_memory=False)
    assert loader.page_rows % store.block_rows == 0
    a, b = loader.order(0), BatchLoader(store, store.indices("train"), 32, seed=1, in_memory=False).order(0)
    assert np.array_equal(a, b) and not np.array_equal(a, loader.order(1))
    assert sorted(a) == sorted(store.indices("train"))


def _damaged(tmp_path):
    _write(tmp_path / "s")
    with h5py.File(tmp_path / "s" / "images.h5", "r+") as f:
        f["images"][300] = 255 - f["images"][300]  # block 3 (rows 255..339)
    return ImageStore(tmp_path / "s")


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("compress-cache-")]  # batches and page reads


def test_a_damaged_block_read_in_the_background_reaches_the_consumer(tmp_path):
    store = _damaged(tmp_path)
    seen = 0
    with pytest.raises(CompressError, match=r"rows 255\.\.339 \(block 3\) do not match the checksum"):
        for _ in _loader(store, in_memory=False).epoch(0):
            seen += 1
    assert seen < len(_loader(store, in_memory=False))
    assert not _loader_threads()


def test_the_loader_thread_stops_when_the_consumer_breaks_early(stored):
    _, path = stored
    batches = _loader(ImageStore(path), in_memory=False).epoch(0)
    next(batches)
    assert _loader_threads()
    batches.close()  # what a `for` loop's break does to its generator once it is dropped
    assert not _loader_threads()
    for _ in _loader(ImageStore(path), in_memory=True).epoch(0):
        break
    assert not _loader_threads()


class _Group:
    """all_gather for processes simulated by threads."""

    def __init__(self, size):
        self.box, self.barrier = [None] * size, threading.Barrier(size, timeout=30)

    def node(self, rank, shm):
        def gather(obj):
            self.box[rank] = obj
            self.barrier.wait()
            out = list(self.box)
            self.barrier.wait()
            return out
        return Node(rank, rank, len(self.box), gather, shm)


def _two_local_ranks(store, shm, **kw):
    """Two ranks of one node, each building its loader at once (the copy is filled, mapped, unlinked)."""
    group, out = _Group(2), [None, None]

    def rank(r):
        try:
            out[r] = _loader(store, rank=r, world_size=2, node=group.node(r, shm), **kw)
        except Exception as e:  # noqa: BLE001 - handed to the test
            out[r] = e
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    return out


def test_ranks_of_a_node_share_one_in_ram_copy(stored, tmp_path):
    images, path = stored
    store = ImageStore(path)
    a, b = _two_local_ranks(store, tmp_path)
    assert a.in_memory and b.in_memory
    assert isinstance(b.images, np.memmap) and not b.images.flags.writeable  # mapped, not a second copy
    assert isinstance(a.images, np.memmap) and a.images.filename == b.images.filename
    assert not list(tmp_path.iterdir())  # unlinked once both had mapped it: nothing left behind
    one = _all(BatchLoader(store, store.indices("train"), 64, seed=5, in_memory=True, pin_memory=False).epoch(2))
    two = [_all(x.epoch(2)) for x in (a, b)]
    for k, (i, x) in enumerate(one):
        assert torch.equal(torch.cat([two[0][k][1], two[1][k][1]]), x)


def test_the_node_budget_and_a_node_without_room_send_every_rank_to_pages(stored, tmp_path):
    _, path = stored
    store = ImageStore(path)
    train_bytes = len(store.indices("train")) * int(np.prod(store.shape[1:]))
    small = _two_local_ranks(store, tmp_path, memory_limit=train_bytes - 1)  # one copy would not fit
    assert not any(x.in_memory for x in small)
    fits = _two_local_ranks(store, tmp_path, memory_limit=train_bytes)  # one copy per node, not one per rank
    assert all(x.in_memory for x in fits)
    no_room = _two_local_ranks(store, tmp_path / "missing")
    assert not any(x.in_memory for x in no_room)


def test_a_damaged_block_stops_every_rank_of_a_shared_copy(tmp_path):
    store = _damaged(tmp_path)
    (tmp_path / "shm").mkdir()
    out = _two_local_ranks(store, tmp_path / "shm", in_memory=True)
    assert all(isinstance(e, CompressError) and "(block 3)" in str(e) for e in out)
    assert not list((tmp_path / "shm").iterdir())


def test_in_ram_batches_built_by_several_threads_are_those_one_thread_builds(stored):
    images, path = stored
    store = ImageStore(path)
    one = _all(_loader(store, in_memory=True, builders=1).epoch(4))
    three = _loader(store, in_memory=True, builders=3)
    assert three.describe()["builders"] == 3 and _loader(store, in_memory=False, builders=3).describe()["builders"] == 1
    assert _same(_all(three.epoch(4)), one) and _same(_all(three.epoch(4, start_batch=4)), one[4:])
    for i, x in one:
        assert np.array_equal(x.numpy(), images[i.numpy()])


def test_an_error_in_one_builder_reaches_the_consumer_at_its_batch(stored, monkeypatch):
    images, path = stored
    store = ImageStore(path)
    from pipeline.data import loader as loader_module
    expected = [i for i, _ in _all(_loader(store, in_memory=True, builders=1).epoch(0))[:5]]
    gather = loader_module._RamRows.gather

    def failing(self, k, positions, out):
        if k == 5:
            raise ValueError("batch 5 failed")
        gather(self, k, positions, out)

    monkeypatch.setattr(loader_module._RamRows, "gather", failing)
    seen = []
    with pytest.raises(ValueError, match="batch 5 failed"):
        for i, _ in _loader(store, in_memory=True, builders=2).epoch(0):
            seen.append(i.clone())
    assert len(seen) == 5 and all(torch.equal(a, b) for a, b in zip(seen, expected))  # 0-4 in order, then the error


def test_direct_and_h5py_block_reads_return_the_same_checked_rows(stored, tmp_path):
    images, path = stored
    assert ImageStore(path).reader().direct
    _write(tmp_path / "s")
    with h5py.File(tmp_path / "s" / "images.h5", "r+") as f:  # the same pixels, gzip-compressed chunks
        data = f["images"][:]
        chunks = f["images"].chunks
        del f["images"]
        f.create_dataset("images", data=data, chunks=chunks, compression="gzip")
    store = ImageStore(tmp_path / "s")
    assert not store.reader().direct
    assert np.array_equal(store.read(100, 400), images[100:400])
    assert _same(_all(_loader(store, in_memory=False).epoch(1)), _all(_loader(ImageStore(path),
                                                                             in_memory=False).epoch(1)))


def test_loader_memory_sizes_and_a_bad_value_is_one_line(tmp_path):
    assert memory_budget("8G") == 8 << 30 and memory_budget("512M") == 512 << 20 and memory_budget("0") == 0
    assert memory_budget("auto") == node_ram() // 4
    with pytest.raises(CompressError, match="--loader-memory 'lots' is not a size"):
        memory_budget("lots")
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                  "--loader-memory", "12 parsecs"])
    assert r.exit_code != 0 and "--loader-memory '12 parsecs' is not a size" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "run" / "config.json").exists()
