"""--cache-memory: above the budget the teacher rows stay in the memory-mapped flat copy beside the cache (shared
through the page cache), and training on it reaches the weights of training on rows in RAM; a bad value is a
one-line error before anything is written."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import stages.train as train_stage
from stages.train import Step, train
from stages.train_config import config_from_dict
from tests.train_fixtures import make_tiny, run


@pytest.fixture(scope="module")
def tiny(module_dir):
    return make_tiny(module_dir, views=(2,))


def _cfg(d, out, **kw):
    return config_from_dict({"data": d / "data", "cache": d / "t2.zarr", "out": out, "preset": "tiny",
                             "device": "cpu", "tensorboard": False, "steps": 3, **kw})


def _mapped_from(t: torch.Tensor, folder) -> bool:
    """Whether the tensor's memory is a mapping of a file in `folder` (this process's /proc/self/maps)."""
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(a, 16) for a in parts[0].split("-"))
        if len(parts) >= 6 and parts[5].startswith(str(folder)) and lo <= t.data_ptr() < hi:
            return True
    return False


def test_rows_above_the_budget_train_from_the_mapped_copy_to_the_same_weights(tiny, tmp_path, monkeypatch):
    loaded = []
    real = train_stage._load_teacher_rows
    monkeypatch.setattr(train_stage, "_load_teacher_rows", lambda *a: loaded.append(real(*a)) or loaded[-1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise comparison: reductions split the same way in both runs
    try:
        train(_cfg(tiny, tmp_path / "ram"))
        assert not (tiny / "t2.zarr.mmap").exists()  # under the budget: rows in RAM, no flat copy
        train(_cfg(tiny, tmp_path / "mapped", cache_memory="0"))
    finally:
        torch.set_num_threads(threads)
    (ram, _, _), (mapped, _, _) = loaded
    assert not _mapped_from(ram, tiny / "t2.zarr.mmap") and _mapped_from(mapped, tiny / "t2.zarr.mmap")
    assert torch.equal(ram, mapped) and mapped.ndim == 3  # (N, V, D): the per-view gather on the host
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["objects"]["method"]
            for r in ("ram", "mapped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_bad_cache_memory_is_a_one_line_error_before_anything_is_written(tiny, tmp_path):
    result = run("train", "--data", tiny / "data", "--cache", tiny / "t2.zarr", "--out", tmp_path / "r",
                 "--preset", "tiny", "--device", "cpu", "--no-tensorboard", "--cache-memory", "lots", ok=False)
    assert result.exit_code != 0
    assert "--cache-memory 'lots' is not a size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r" / "config.json").exists() and not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="rows on the host for a GPU need a GPU")
def test_host_rows_are_gathered_with_host_indices_for_a_gpu():
    rows = torch.nn.functional.normalize(torch.randn(10, 3, 4), dim=-1).half()
    step = SimpleNamespace(teacher_rows=rows, device=torch.device("cuda"))
    idx, v = torch.tensor([3, 1, 3]), torch.tensor([2, 0, 1])
    got = Step._rows(step, idx, idx.cuda(), v)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert torch.equal(got.cpu(), rows[idx, v].float())
    assert torch.equal(Step._rows(step, idx, idx.cuda()).cpu(), rows[idx].float())
