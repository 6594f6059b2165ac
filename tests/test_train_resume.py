"""A training run killed with SIGKILL continues, when the same command is run again, to the same bits as an
uninterrupted run; a non-finite loss stops the run and leaves the last good checkpoint intact."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pipeline.methods.compress as compress_module
from pipeline.runtime.errors import CompressError
from stages.train import train
from stages.train_config import config_from_dict
from tests.train_fixtures import kill_at_first_checkpoint, make_tiny

REPO = Path(__file__).resolve().parent.parent
# One thread: bitwise equality must not depend on how reductions are split across threads.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny(module_dir):
    return make_tiny(module_dir)


def command(d: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stages", "train", "--data", str(d / "data"), "--cache", str(d / "t1.zarr"),
            "--out", str(out), "--preset", "tiny", "--epochs", "2", "--checkpoint-every", "2", "--device", "cpu",
            "--no-tensorboard", "--method", "compress-2q"]


def _objects(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_sigkill_then_rerun_ends_bitwise_equal_to_an_uninterrupted_run(tiny, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(command(tiny, reference), env=ENV, check=True, capture_output=True)
    killed = tmp_path / "killed"
    kill_at_first_checkpoint(command(tiny, killed), killed, ENV)
    step_at_kill = _objects(killed / "checkpoint.pt")["step"]
    assert 0 < step_at_kill < 10
    subprocess.run(command(tiny, killed), env=ENV, check=True, capture_output=True)
    assert '"event": "resume"' in (killed / "log.jsonl").read_text()
    a, b = _objects(reference / "checkpoint.pt"), _objects(killed / "checkpoint.pt")
    assert a["step"] == b["step"] == 10
    # student, momentum student, heads, queues with their pointer, optimiser, scaler, RNG
    _assert_equal(a["objects"], b["objects"], "objects")
    _assert_equal(a["rng"], b["rng"], "rng")
    _assert_equal(_objects(reference / "model.pt")["state_dict"], _objects(killed / "model.pt")["state_dict"])


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    calls = []
    real = compress_module.compress_loss

    def poisoned(*args, **kw):  # a loss that blows up at the 4th step
        calls.append(1)
        loss = real(*args, **kw)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(compress_module, "compress_loss", poisoned)
    cfg = config_from_dict({"data": tiny / "data", "cache": tiny / "t1.zarr", "out": tmp_path / "nan",
                            "preset": "tiny", "checkpoint_every": 2, "device": "cpu", "tensorboard": False})
    with pytest.raises(CompressError, match="non-finite loss nan at step 3.*intact"):
        train(cfg)
    saved = _objects(tmp_path / "nan" / "checkpoint.pt")
    assert saved["step"] == 2 and not (tmp_path / "nan" / "model.pt").exists()
    assert all(torch.isfinite(v).all() for v in saved["objects"]["method"].values() if v.is_floating_point())
