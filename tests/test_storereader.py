"""Uncached (O_DIRECT) block reads (issue 17): a store's blocks start on 4 KiB boundaries, and reads past the
page cache return exactly the bytes buffered reads do, into aligned buffers or not, at any file offset, up to
the partial last block, and turn into buffered reads when the filesystem refuses O_DIRECT."""
import errno
import os

import numpy as np
import pytest
import torch

from pipeline.data import storereader
from pipeline.data.imagestore import ImageStore
from pipeline.data.loader import BatchLoader
from pipeline.data.storereader import ALIGN, StoreReader, aligned_empty
from tests.store_fixtures import random_store

N, SHAPE = 600, (64, 64, 3)  # 85-row blocks (1 MiB): 7 whole ones and a partial eighth


@pytest.fixture(scope="module")
def stored(module_dir):
    return random_store(module_dir, N, SHAPE, classes=3, test_every=7), module_dir


def _odirect_or_skip(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except (AttributeError, OSError):
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)


def _unaligned(shape, skew=16):
    """An array of `shape` whose first byte is `skew` bytes past a 4 KiB boundary."""
    count = int(np.prod(shape))
    return aligned_empty((count + ALIGN,))[skew:skew + count].reshape(shape)


def test_prepare_writes_blocks_on_4k_boundaries(stored):
    reader = ImageStore(stored[1]).reader()
    assert reader.direct and len(reader.offsets) == 8
    assert (reader.offsets % ALIGN == 0).all()


def test_uncached_block_reads_equal_the_store_rows_into_aligned_and_unaligned_buffers(stored):
    images, path = stored
    _odirect_or_skip(path / "images.h5")
    store = ImageStore(path)
    reader, r = StoreReader(store), store.block_rows
    for first, last in [(0, 0), (2, 4), (6, 7), (7, 7), (0, 7)]:
        lo, hi = first * r, min((last + 1) * r, N)
        for out in (aligned_empty((hi - lo,) + SHAPE), _unaligned((hi - lo,) + SHAPE)):
            out[:] = 0
            reader.read_blocks(first, last, out=out, uncached=True)
            assert np.array_equal(out, images[lo:hi]), (first, last, out.ctypes.data % ALIGN)
    assert reader.io == "o_direct"
    assert np.array_equal(reader.read_blocks(3, 5, uncached=True), images[3 * r:6 * r])  # a buffer of its own


def test_unaligned_uncached_reads_through_the_bounce_buffer_match_the_file(tmp_path, monkeypatch):
    """Offsets, lengths and addresses that are not aligned, read in several bounce-buffer pieces, up to the
    end of a file whose size is not a multiple of 4 KiB: the bytes are the file's."""
    data = np.random.default_rng(0).integers(0, 256, 9 * ALIGN + 777, dtype=np.uint8)
    path = tmp_path / "plain.bin"
    path.write_bytes(data.tobytes())
    _odirect_or_skip(path)
    monkeypatch.setattr(storereader, "_BOUNCE", 2 * ALIGN)  # several pieces per read
    reader = StoreReader.__new__(StoreReader)  # only the bounce buffer is used
    reader._bounce = None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        rng = np.random.default_rng(1)
        cases = [(0, len(data)), (1, len(data) - 1), (ALIGN, 3 * ALIGN), (ALIGN - 1, 2), (len(data) - 5, 5)]
        cases += [(int(a), int(rng.integers(1, len(data) - a + 1))) for a in rng.integers(0, len(data), 20)]
        for offset, length in cases:
            dest = _unaligned((length,), skew=int(rng.integers(0, 64)))
            done = reader._read_uncached(fd, memoryview(dest), offset)
            assert done == length and np.array_equal(dest, data[offset:offset + length]), (offset, length)
    finally:
        os.close(fd)


def test_a_filesystem_that_refuses_o_direct_reads_gets_buffered_reads(stored, monkeypatch):
    images, path = stored
    _odirect_or_skip(path / "images.h5")
    reader = StoreReader(ImageStore(path))
    reader.read_blocks(0, 0, uncached=True)
    refused, real = reader._odirect, os.preadv

    def preadv(fd, buffers, offset):
        if fd == refused:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    out = reader.read_blocks(1, 3, out=aligned_empty((3 * 85,) + SHAPE), uncached=True)
    assert np.array_equal(out, images[85:4 * 85]) and reader.io == "buffered"


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_loader_yields_the_same_batches_uncached_or_buffered(stored, in_memory):
    images, path = stored
    store = ImageStore(path)

    def batches(uncached):
        loader = BatchLoader(store, store.indices("train"), 32, seed=2, in_memory=in_memory, page_rows=85,
                             window_pages=2, pin_memory=False, uncached=uncached)
        assert loader.describe()["uncached"] is uncached
        return [(i.clone(), x.clone()) for i, x in loader.epoch(1)]

    a, b = batches(True), batches(False)
    assert len(a) == len(b) == len(store.indices("train")) // 32
    for (i, x), (j, y) in zip(a, b):
        assert torch.equal(i, j) and torch.equal(x, y) and np.array_equal(x.numpy(), images[i.numpy()])
