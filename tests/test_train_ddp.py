"""Two torchrun processes (gloo, CPU) with batch 16 each train like one process with batch 32.

Exactly equal: the data each step sees (same global batch, same crops: random draws are made for the global
batch and sliced per rank) and the teacher queue, which all-gathers every rank's rows before writing at the one
shared pointer. Equal up to float rounding: the weights and the momentum-student queue, against one process
run with `--bn-groups 2` - BatchNorm then normalises each half of the batch on its own, as each rank does
(DDP without SyncBN). Against a plain one-process run (BatchNorm over all 32) they differ, as they should.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_fixtures import make_tiny

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def command(d: Path, out: Path, batch: int, launcher: list[str], bn_groups: int = 1) -> list[str]:
    return launcher + ["train", "--data", str(d / "data"), "--cache", str(d / "t1.zarr"), "--out", str(out),
                       "--preset", "tiny", "--batch-size", str(batch), "--device", "cpu", "--no-tensorboard",
                       "--method", "compress-2q", "--lr", "0.05", "--bn-groups", str(bn_groups)]


@pytest.fixture(scope="module")
def runs(module_dir):
    d = make_tiny(module_dir)
    one = [sys.executable, "-m", "stages"]
    subprocess.run(command(d, d / "one", 32, one), env=ENV, check=True, capture_output=True)
    subprocess.run(command(d, d / "ghost", 32, one, bn_groups=2), env=ENV, check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "stages"]
    done = subprocess.run(command(d, d / "two", 16, torchrun), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return d


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["objects"]["method"]


def _weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("student.") and v.is_floating_point()
            and "running" not in k}  # BN running statistics: each rank keeps its own, as DDP leaves them


def test_queues_are_all_gathered_in_rank_order_at_one_pointer(runs):
    one, ghost, two = (_state(runs / f"{r}/checkpoint.pt") for r in ("one", "ghost", "two"))
    assert int(one["bank.ptr"]) == int(ghost["bank.ptr"]) == int(two["bank.ptr"]) == (5 * 32) % 64
    assert torch.equal(one["bank.queue_teacher"], two["bank.queue_teacher"])
    # momentum-student rows: the same images in the same slots, under the same per-half BatchNorm
    torch.testing.assert_close(two["bank.queue_student"], ghost["bank.queue_student"], atol=1e-5, rtol=0)
    assert not torch.allclose(two["bank.queue_student"], one["bank.queue_student"], atol=1e-3)


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    one, ghost, two = (_weights(_state(runs / f"{r}/checkpoint.pt")) for r in ("one", "ghost", "two"))
    assert one.keys() == two.keys() and len(two) > 20
    for k in two:  # bitwise equal on this machine (one thread each); the tolerance is for other BLAS builds
        torch.testing.assert_close(two[k], ghost[k], atol=1e-5, rtol=0, msg=k)
    # ...and the check is sharp enough to see BatchNorm's grouping: whole-batch statistics move the weights
    assert max((two[k] - one[k]).abs().max().item() for k in two) > 1e-2
    log = (runs / "two/log.jsonl").read_text()
    assert '"world_size": 2' in log and log.count('"event": "epoch"') == 1  # rank 0 alone writes
    assert (runs / "two/model.pt").is_file()
