"""Tiny data shared by the training tests: 200 digits, a random ResNet-18 teacher at 8 px, its caches."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner

from stages.cli import main
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
from stages.prepare import PrepareConfig, prepare

# every option of the tiny preset spelled out, so the commands read like a user's
TINY = ["--small-input", "--input-size", "8", "--batch-size", "32", "--bank-size", "64", "--seed", "0", "--epochs", "1",
        "--no-tensorboard", "--device", "cpu", "--crd-negatives", "64"]


def run(*args, ok: bool = True):
    """`compress-cache ARGS` in this process; with ok, it must succeed."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def cli(*args) -> None:
    run(*args)


def kill_at_first_checkpoint(cmd: list[str], out: Path, env: dict) -> None:
    """Start `cmd` (a training process writing into `out`) and SIGKILL it as soon as its first checkpoint exists:
    mid-run, before model.pt."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "the kill must land mid-run"


def make_tiny(d: Path, views: tuple[int, ...] = (1,)) -> Path:
    """d/data (image store), d/t.pt (teacher), d/t{V}.zarr for each number of views V."""
    prepare(PrepareConfig(dataset="digits", limit=200, out=d / "data"))
    save_model(d / "t.pt", build_backbone("resnet18", small_input=True, seed=1), default_preprocessing(8))
    for v in views:
        cli("extract", "--data", d / "data", "--weights", d / "t.pt", "--out", d / f"t{v}.zarr", "--views", v,
            "--batch-size", "64", "--device", "cpu", "--no-progress")
    return d
