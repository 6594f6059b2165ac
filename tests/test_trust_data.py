"""Issue 16, case 2: the image store is checked against its manifest whenever it is read, at no extra pass.

Pixels changed behind the manifest's back, an edited fingerprint, labels swapped: each is refused by the
first read that touches them (the loader, extract, evaluation), and `compress-cache verify` takes a store.
"""
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from stages.cli import main
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from pipeline.data.loader import BatchLoader
from tests.store_fixtures import random_store

N = 300


def _store(path, n=N, shape=(6, 6, 3)):
    return random_store(path, n, shape, classes=4, test_every=5)


def _tamper_pixels(path, row):
    with h5py.File(path / "images.h5", "r+") as f:
        f["images"][row] = 255 - f["images"][row]


def test_reads_of_any_range_return_the_stored_rows(tmp_path):
    images = _store(tmp_path / "s", shape=(40, 40, 3))  # 218 rows per block: ranges cross block edges
    store = ImageStore(tmp_path / "s")
    assert store.block_rows < N
    for lo, hi in [(0, N), (0, 1), (217, 219), (5, 290), (299, 300), (100, 100)]:
        assert np.array_equal(store.read(lo, hi), images[lo:hi]), (lo, hi)
    got = np.concatenate([store.read(lo, lo + 37) for lo in range(0, N, 37)])  # sequential, as extract reads
    assert np.array_equal(got, images)
    store.read(0, 5)[:] = 0  # a caller writing into what it got does not change later reads
    assert np.array_equal(store.read(0, 5), images[:5])


@pytest.mark.parametrize("in_memory", [True, False])
def test_inverted_pixels_are_refused_by_the_loader(tmp_path, in_memory):
    _store(tmp_path / "s", shape=(40, 40, 3))
    _tamper_pixels(tmp_path / "s", 250)
    store = ImageStore(tmp_path / "s")  # the manifest itself is intact: opening is fine
    with pytest.raises(CompressError, match=r"rows 218\.\.299 \(block 1\) do not match the checksum"):
        loader = BatchLoader(store, store.indices("train"), 16, seed=0, in_memory=in_memory, page_rows=32)
        for _ in loader.epoch(0):
            pass


def test_an_edited_fingerprint_is_refused_on_opening(tmp_path):
    _store(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CompressError, match="fingerprint or checksums were edited"):
        ImageStore(tmp_path / "s")


def test_changed_labels_are_refused_on_opening(tmp_path):
    _store(tmp_path / "s")
    with h5py.File(tmp_path / "s" / "images.h5", "r+") as f:
        f["labels"][0] = 3 - f["labels"][0]
    with pytest.raises(CompressError, match="labels or the train/val split differ"):
        ImageStore(tmp_path / "s")


def test_verify_takes_an_image_store(tmp_path):
    _store(tmp_path / "s", shape=(40, 40, 3))
    ok = CliRunner().invoke(main, ["verify", str(tmp_path / "s")])
    assert ok.exit_code == 0 and "every block matches" in ok.output
    _tamper_pixels(tmp_path / "s", 3)
    bad = CliRunner().invoke(main, ["verify", str(tmp_path / "s")])
    assert bad.exit_code == 1 and "rows 0..217 (block 0): checksum mismatch" in bad.output
    assert "block 1" not in bad.output


def test_a_store_written_before_block_checksums_is_rehashed_when_opened(tmp_path):
    images = _store(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del manifest["integrity"]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with h5py.File(tmp_path / "s" / "images.h5", "r+") as f:
        del f["block_sha256"]
    assert np.array_equal(ImageStore(tmp_path / "s").read(), images)
    _tamper_pixels(tmp_path / "s", 7)
    with pytest.raises(CompressError, match="do not match the manifest's fingerprint"):
        ImageStore(tmp_path / "s")
