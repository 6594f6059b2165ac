"""extract --amp: the teacher's forward under autocast, recorded in the cache (its rows differ slightly)."""
from __future__ import annotations

import torch
import zarr

from cache.load import load_embeddings
from tests.train_fixtures import make_tiny, run


def test_amp_is_recorded_and_changes_the_rows_only_slightly(tmp_path):
    d = make_tiny(tmp_path, views=())
    args = ["extract", "--data", d / "data", "--weights", d / "t.pt", "--device", "cpu", "--dtype", "float32",
            "--no-progress"]
    run(*args, "--out", d / "auto.zarr")  # auto on the CPU: full precision
    run(*args, "--out", d / "bf16.zarr", "--amp", "bf16")
    assert zarr.open_group(str(d / "auto.zarr"), mode="r").attrs["amp"] == "none"
    assert zarr.open_group(str(d / "bf16.zarr"), mode="r").attrs["amp"] == "bf16"
    full, _ = load_embeddings(d / "auto.zarr")
    low, _ = load_embeddings(d / "bf16.zarr")
    cos = (full.float() * low.float()).sum(1)
    assert not torch.equal(full, low) and cos.min() > 0.99
    refused = run(*args, "--out", d / "auto.zarr", "--amp", "bf16", ok=False)  # another request: never mixed
    assert refused.exit_code == 1 and "amp" in refused.output
