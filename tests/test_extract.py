"""Stage `extract` in process, on a tiny random image store and a tiny teacher (seconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache.errors import CacheError
from cache.load import load_crops, load_embeddings
from stages.cli import main
from tests.embed_store import embed_store
from pipeline.data.imagestore import ImageStore, write_image_store
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
from pipeline.models.teachers import load_teacher
from stages.extract import ExtractConfig, extract
from tests.lock_holder import lock_held_by_another_process



def tiny(tmp: Path, n: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """(image store of n random 8x8 RGB images, resnet18 teacher file at 8 px)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    write_image_store(tmp / "data", images, rng.integers(0, 3, n), np.zeros(n), [f"x{i}" for i in range(n)],
                      dataset="random", classes=["a", "b", "c"], source="test")
    save_model(tmp / "t.pt", build_backbone("resnet18", small_input=True, seed=seed), default_preprocessing(8))
    return tmp / "data", tmp / "t.pt"


def cfg(tmp, data, weights, **kw) -> ExtractConfig:
    return ExtractConfig(data=data, weights=weights, out=tmp / "c.zarr", shard_rows=16, batch_size=8,
                         device="cpu", progress=False, **kw)


def test_extract_matches_the_teacher_and_is_reused(tmp_path):
    data, weights = tiny(tmp_path)
    result = extract(cfg(tmp_path, data, weights, dtype="float32"))
    assert result["shards_written"] == 3 and result["attributes"]["complete"]
    z, attrs = load_embeddings(tmp_path / "c.zarr", expect_fingerprint=ImageStore(data).fingerprint)
    teacher, identity = load_teacher(weights)
    expected = embed_store(teacher, ImageStore(data), identity["preprocessing"], batch_size=8)
    assert z.shape == (40, 512) and torch.allclose(z, expected, atol=1e-5)
    assert attrs["teacher"] == identity and attrs["provenance"]["git_sha"]
    again = extract(cfg(tmp_path, data, weights, dtype="float32"))  # same request: nothing recomputed
    assert again["shards_written"] == 0


def test_other_teacher_is_refused_then_rebuilt_with_overwrite(tmp_path):
    data, weights = tiny(tmp_path)
    extract(cfg(tmp_path, data, weights))
    save_model(tmp_path / "t.pt", build_backbone("resnet18", small_input=True, seed=1), default_preprocessing(8))
    with pytest.raises(CacheError, match=r"teacher\.weights_sha256: .* != .*--overwrite"):
        extract(cfg(tmp_path, data, weights))
    assert extract(cfg(tmp_path, data, weights, overwrite=True))["shards_written"] == 3


def test_multi_view_stores_crops_and_view0_is_the_centre(tmp_path):
    data, weights = tiny(tmp_path, n=20)
    extract(cfg(tmp_path, data, weights))
    single, _ = load_embeddings(tmp_path / "c.zarr")
    multi_cfg = cfg(tmp_path, data, weights, views=3, view_seed=5)
    multi_cfg.out = tmp_path / "m.zarr"
    extract(multi_cfg)
    multi, attrs = load_embeddings(tmp_path / "m.zarr")
    crops = load_crops(tmp_path / "m.zarr")
    assert multi.shape == (20, 3, 512) and crops.shape == (20, 3, 5)
    assert attrs["view_params"]["seed"] == 5
    assert torch.equal(multi[:, 0], single)
    assert torch.equal(crops[:, 0], torch.tensor([0.5, 0.5, 1.0, 1.0, 0.0]).repeat(20, 1))
    assert not torch.equal(crops[:, 1], crops[:, 2]) and not torch.equal(multi[:, 1], multi[:, 2])


def test_extract_refused_while_another_process_writes(tmp_path):
    data, weights = tiny(tmp_path, n=16)
    with lock_held_by_another_process(tmp_path / "c.zarr"):
        with pytest.raises(CacheError, match="is being written by pid"):
            extract(cfg(tmp_path, data, weights))


def test_cli_extract_info_verify(tmp_path):
    data, weights = tiny(tmp_path, n=24)
    out = tmp_path / "c.zarr"
    runner = CliRunner()
    r = runner.invoke(main, ["extract", "--data", str(data), "--weights", str(weights), "--out", str(out),
                             "--shard-rows", "8", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["info", str(out)])
    assert r.exit_code == 0 and "3/3" in r.output and "complete" in r.output
    r = runner.invoke(main, ["info", str(out), "--json"])
    assert '"rows": 24' in r.output
    assert runner.invoke(main, ["verify", str(out)]).exit_code == 0
    f = next(p for p in (out / "embeddings" / "c" / "1").rglob("*") if p.is_file())
    raw = bytearray(f.read_bytes())
    raw[10] ^= 0xFF
    f.write_bytes(bytes(raw))
    r = runner.invoke(main, ["verify", str(out)])
    assert r.exit_code == 1 and "shard 1 (embeddings, rows 8..15)" in r.output
    r = runner.invoke(main, ["extract", "--data", str(data), "--weights", str(weights), "--out", str(out),
                             "--dtype", "float32", "--shard-rows", "8", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 1 and "dtype: 'float16' != 'float32'" in r.output
    assert "Traceback" not in r.output


def test_distributed_helpers_are_no_ops_at_world_size_one():
    from pipeline.runtime import distributed
    world = distributed.init("cpu")
    assert (world.rank, world.world_size, world.is_main, world.backend) == (0, 1, True, None)
    x = torch.randn(3, 4, requires_grad=True)
    gathered = distributed.all_gather(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
