"""Issue 16, case 7 (cache side): a store is checked before it is called complete, damaged metadata is one line,
leftover progress markers are cleaned, a text file as teacher checkpoint is one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cache.errors import CacheError
from cache.load import load_embeddings
from stages.cli import main
from stages.extract import extract
from tests.test_extract import cfg, tiny


@pytest.fixture()
def built(tmp_path):
    data, weights = tiny(tmp_path)
    extract(cfg(tmp_path, data, weights))
    return tmp_path, data, weights


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_complete_store_with_a_deleted_shard_is_repaired_not_called_complete(built):
    tmp, data, weights = built
    reference, _ = load_embeddings(tmp / "c.zarr")
    shard = tmp / "c.zarr" / "embeddings" / "c" / "1" / "0"
    shard.unlink()
    result = extract(cfg(tmp, data, weights))
    assert result["repaired"] == [1] and result["shards_written"] == 1
    assert shard.is_file() and not (tmp / "c.zarr" / "progress").exists()
    again, attrs = load_embeddings(tmp / "c.zarr")
    assert attrs["complete"] and np.array_equal(again.numpy(), reference.numpy())


def test_progress_left_by_a_kill_after_completion_is_removed(built):
    tmp, data, weights = built
    (tmp / "c.zarr" / "progress").mkdir()
    (tmp / "c.zarr" / "progress" / "shard-000000.json").write_text("{}")
    assert extract(cfg(tmp, data, weights))["shards_written"] == 0
    assert not (tmp / "c.zarr" / "progress").exists()


@pytest.mark.parametrize("command", ["verify", "extract", "load"])
def test_corrupt_array_metadata_is_one_line(built, command):
    tmp, data, weights = built
    (tmp / "c.zarr" / "embeddings" / "zarr.json").write_text('{"zarr_format": 3, "node_')
    if command == "load":
        with pytest.raises(CacheError, match=r"embeddings/zarr.json\) is unreadable"):
            load_embeddings(tmp / "c.zarr")
        return
    args = (["verify", tmp / "c.zarr"] if command == "verify" else
            ["extract", "--data", data, "--weights", weights, "--out", tmp / "c.zarr", "--shard-rows", 16,
             "--device", "cpu", "--no-progress"])
    r = _run(*args)
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "embeddings/zarr.json) is unreadable" in r.output and r.output.count("\n") == 1


def test_garbage_group_metadata_is_not_a_cache(built):
    tmp, _, _ = built
    (tmp / "c.zarr" / "zarr.json").write_bytes(b"\xff\xfe\x00garbage")
    r = _run("verify", tmp / "c.zarr")
    assert r.exit_code == 1 and "is not a compress-cache teacher cache" in r.output


def test_a_text_file_as_teacher_checkpoint_is_one_line(tmp_path):
    data, _ = tiny(tmp_path)
    (tmp_path / "notes.pt").write_text("these are not weights\n" * 20)
    r = _run("extract", "--data", data, "--weights", tmp_path / "notes.pt", "--out", tmp_path / "c.zarr",
             "--device", "cpu", "--no-progress")
    assert r.exit_code == 1 and "cannot be read" in r.output and r.output.count("\n") == 1, r.output


def test_extract_out_naming_a_file_is_one_line(tmp_path):
    data, weights = tiny(tmp_path)
    (tmp_path / "file").write_text("x")
    r = _run("extract", "--data", data, "--weights", weights, "--out", tmp_path / "file", "--device", "cpu",
             "--no-progress")
    assert r.exit_code == 1 and "exists and is not a teacher cache" in r.output
    assert (tmp_path / "file").read_text() == "x"


def test_a_store_created_half_way_is_removed(tmp_path, monkeypatch):
    import cache.store as store_module
    data, weights = tiny(tmp_path)

    def no_space(group, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.zarr.Group, "create_array", no_space)
    with pytest.raises(CacheError, match="cannot create teacher cache .*No space left on device"):
        extract(cfg(tmp_path, data, weights))
    assert not (tmp_path / "c.zarr").exists()
    monkeypatch.undo()
    assert extract(cfg(tmp_path, data, weights))["attributes"]["complete"]


def test_info_json_of_a_repaired_store_is_complete(built):
    tmp, data, weights = built
    shutil.rmtree(tmp / "c.zarr" / "embeddings" / "c" / "0")
    extract(cfg(tmp, data, weights))
    info = json.loads(_run("info", tmp / "c.zarr", "--json").output)
    assert info["complete"] and info["shards_done"] == info["shards_total"] == 3
