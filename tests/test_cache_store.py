"""The cache package on its own: layout, identity, checksums, loading, verify, lock (no teacher involved)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cache.errors import CacheError
from cache.layout import CacheSpec, rank_shards
from cache.load import load_crops, load_embeddings
from cache.lock import StoreLock
from cache.store import open_or_create
from cache.verify import info, verify_store
from cache.writer import CacheWriter
from tests.lock_holder import lock_held_by_another_process

TEACHER = {"arch": "resnet18", "weights_sha256": "a" * 64, "preprocessing": {"mean": [0.5], "input_size": 8}}


def unit(*shape, seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def spec(**kw) -> CacheSpec:
    base = dict(n=100, dim=16, data_fingerprint="f" * 64, teacher=TEACHER, shard_rows=32, chunk_rows=16)
    return CacheSpec(**{**base, **kw})


def build(path: Path, s: CacheSpec, values: np.ndarray, crops: np.ndarray | None = None) -> None:
    open_or_create(path, s)
    w = CacheWriter(path)
    for k in range(s.num_shards):
        lo, hi = w.rows(k)
        w.write_shard(k, values[lo:hi], None if crops is None else crops[lo:hi])
    w.finalize()


def shard_file(path: Path, k: int) -> Path:
    return next(p for p in (path / "embeddings" / "c" / str(k)).rglob("*") if p.is_file())


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_roundtrip_single_view(tmp_path, dtype):
    x = unit(100, 16)
    build(tmp_path / "c.zarr", spec(dtype=dtype), x)
    z, attrs = load_embeddings(tmp_path / "c.zarr", expect_fingerprint="f" * 64)
    assert z.dtype == getattr(torch, dtype) and z.shape == (100, 16)
    assert np.array_equal(z.numpy(), x.astype(dtype))
    assert attrs["complete"] and len(attrs["checksums"]["embeddings"]) == 4  # 32+32+32+4 rows
    assert load_crops(tmp_path / "c.zarr") is None
    assert verify_store(tmp_path / "c.zarr") == []
    d = info(tmp_path / "c.zarr")
    assert (d["rows"], d["dim"], d["shards_done"], d["shards_total"], d["complete"]) == (100, 16, 4, 4, True)
    assert not (tmp_path / "c.zarr" / "progress").exists()


def test_multi_view_with_crops_and_mmap(tmp_path):
    x = unit(70, 3, 8)
    crops = np.random.default_rng(1).random((70, 3, 5)).astype(np.float32)
    build(tmp_path / "c.zarr", spec(n=70, dim=8, views=3, view_params={"seed": 0}), x, crops)
    z, _ = load_embeddings(tmp_path / "c.zarr")
    assert z.shape == (70, 3, 8)
    assert torch.equal(load_crops(tmp_path / "c.zarr"), torch.from_numpy(crops))
    m, _ = load_embeddings(tmp_path / "c.zarr", mmap=True)
    m2, _ = load_embeddings(tmp_path / "c.zarr", mmap=True)  # second time: the existing map is reused
    assert torch.equal(m, z) and torch.equal(m2, z)
    assert list((tmp_path / "c.zarr.mmap").glob("embeddings-*.npy"))


def test_fp16_cosine_error_is_bounded():
    """fp16 storage of unit vectors: self-cosine error <= 1e-4 and every pairwise dot moves by < 1e-3."""
    x = torch.from_numpy(unit(2000, 512, seed=3)).double()
    h = x.half().double()
    self_error = 1 - torch.nn.functional.cosine_similarity(x, h, dim=1)
    assert self_error.max() <= 1e-4
    y = torch.from_numpy(unit(200, 512, seed=4)).double()
    assert (x @ y.T - h @ y.half().double().T).abs().max() < 1e-3


def test_corrupt_shard_is_caught_by_verify_and_load(tmp_path):
    path = tmp_path / "c.zarr"
    build(path, spec(dtype="float32"), unit(100, 16))
    f = shard_file(path, 2)
    raw = bytearray(f.read_bytes())
    raw[40] ^= 0xFF  # inside the first chunk's data
    f.write_bytes(bytes(raw))
    problems = verify_store(path)
    assert len(problems) == 1 and problems[0].startswith("shard 2 ")
    with pytest.raises(CacheError, match=r"shard 2 \(rows 64\.\.95\) is corrupt"):
        load_embeddings(path)


def test_fingerprint_mismatch_and_incomplete_are_refused(tmp_path):
    path = tmp_path / "c.zarr"
    s = spec()
    open_or_create(path, s)
    CacheWriter(path).write_shard(0, unit(32, 16))
    with pytest.raises(CacheError, match="incomplete"):
        load_embeddings(path)
    assert "incomplete: 1 of 4" in verify_store(path)[0]
    assert info(path)["shards_done"] == 1
    with pytest.raises(CacheError, match="4 shards are not written|3 of 4 shards"):
        CacheWriter(path).finalize()
    build(path, s, unit(100, 16))
    with pytest.raises(CacheError, match=r"fingerprint ffffffffffff, but this data has 000000000000.*re-run"):
        load_embeddings(path, expect_fingerprint="0" * 64)


def test_other_request_is_refused_naming_the_difference_unless_overwrite(tmp_path):
    path = tmp_path / "c.zarr"
    build(path, spec(), unit(100, 16))
    other = spec(teacher={**TEACHER, "weights_sha256": "b" * 64}, dtype="float32")
    with pytest.raises(CacheError, match=r"dtype: 'float16' != 'float32'.*teacher\.weights_sha256"):
        open_or_create(path, other)
    open_or_create(path, other, overwrite=True)
    assert info(path)["dtype"] == "float32" and not info(path)["complete"]


def test_missing_and_foreign_paths(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        load_embeddings(tmp_path / "nope.zarr")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a compress-cache teacher cache"):
        info(tmp_path / "folder")
    with pytest.raises(CacheError, match="exists and is not a teacher cache"):
        open_or_create(tmp_path / "folder", spec(), overwrite=True)
    assert (tmp_path / "folder" / "x.txt").exists()


def test_resume_skips_verified_shards_and_redoes_damaged_ones(tmp_path):
    path = tmp_path / "c.zarr"
    open_or_create(path, spec())
    w = CacheWriter(path)
    x = unit(100, 16)
    for k in (0, 1, 2):
        lo, hi = w.rows(k)
        w.write_shard(k, x[lo:hi])
    (path / "embeddings" / "c" / "3.abc.partial").write_bytes(b"half")
    shard_file(path, 1).write_bytes(b"garbage")
    w = CacheWriter(path)
    assert [p.name for p in w.clean_debris()] == ["3.abc.partial"]
    assert w.pending(range(4)) == [1, 3]


def test_rank_shards_partition_whole_shards():
    for n, world in [(10, 1), (10, 3), (2, 4), (7, 2)]:
        parts = [list(rank_shards(n, r, world)) for r in range(world)]
        assert sum(parts, []) == list(range(n))


def test_second_writer_is_refused_while_a_process_holds_the_lock(tmp_path):
    path = tmp_path / "c.zarr"
    with lock_held_by_another_process(path) as holder:
        with pytest.raises(CacheError, match=rf"being written by pid {holder.pid}"):
            StoreLock(path).acquire()
    with StoreLock(path):  # the kernel dropped the killed holder's lock
        pass
    assert not StoreLock(path).path.exists()
