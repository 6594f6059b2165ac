"""Real processes: kill -9 mid-extraction then resume, and 1 vs 2 torchrun (gloo) processes, must all give the
same store, byte for byte, as one uninterrupted single-process run."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.data.imagestore import write_image_store
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone

REPO = Path(__file__).resolve().parent.parent
N, SHARD = 96, 8  # 12 shards: a kill lands mid-run
# One thread in every process: the bytes must not depend on thread scheduling, and 2 cores are shared.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
VOLATILE = {"created", "completed", "provenance"}


@pytest.fixture(scope="module")
def setup(module_dir):
    tmp = module_dir
    rng = np.random.default_rng(0)
    write_image_store(tmp / "data", rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8), np.zeros(N),
                      np.zeros(N), [f"x{i}" for i in range(N)], dataset="random", classes=["a"], source="test")
    save_model(tmp / "t.pt", build_backbone("resnet18", small_input=True, seed=0), default_preprocessing(8))
    reference = tmp / "reference.zarr"
    subprocess.run(args(tmp, reference), env=ENV, check=True, capture_output=True)
    return tmp, reference


def args(tmp: Path, out: Path, launcher: list[str] | None = None) -> list[str]:
    launcher = launcher or [sys.executable, "-m", "stages"]
    return launcher + ["extract", "--data", str(tmp / "data"), "--weights", str(tmp / "t.pt"), "--out", str(out),
                       "--shard-rows", str(SHARD), "--batch-size", "8", "--device", "cpu", "--no-progress"]


def assert_same_store(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    attrs_a = {k: v for k, v in ga.attrs.asdict().items() if k not in VOLATILE}
    attrs_b = {k: v for k, v in gb.attrs.asdict().items() if k not in VOLATILE}
    assert attrs_a == attrs_b and attrs_a["complete"]
    assert np.array_equal(ga["embeddings"][:], gb["embeddings"][:])
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b  # no debris, no progress markers left
    for f in files_a:
        if f.parts[0] == "embeddings" and f.name != "zarr.json":
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_sigkill_mid_extraction_then_resume_gives_the_same_store(setup):
    tmp, reference = setup
    out = tmp / "killed.zarr"
    proc = subprocess.Popen(args(tmp, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = out / "progress"
    deadline = time.monotonic() + 120
    while not (progress.is_dir() and any(progress.glob("shard-*.json"))):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(list(progress.glob("shard-*.json")))
    assert 0 < kept < N // SHARD, "the kill must land mid-extraction"
    (out / "embeddings" / "c" / "11.deadbeef.partial").write_bytes(b"debris of a killed write")
    done = subprocess.run(args(tmp, out), env=ENV, capture_output=True, text=True, check=True)
    assert f"({N // SHARD - kept} written now" in done.stdout  # verified shards were kept
    assert_same_store(out, reference)


def test_two_torchrun_processes_give_the_same_store(setup):
    tmp, reference = setup
    out = tmp / "two.zarr"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "stages"]
    done = subprocess.run(args(tmp, out, torchrun), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(re.findall(r"written now", done.stdout)) == 1  # rank 0 alone reports
    assert_same_store(out, reference)
