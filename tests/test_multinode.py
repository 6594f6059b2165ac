"""Two gloo processes launched as two nodes (each its own LOCAL_RANK 0, each with its own paths), so each can be
given other files, as node-local copies can differ:

- a rank given other data refuses, on every rank, before `extract` or `train` writes anything;
- the resume decision is rank 0's: a rank whose node-local --out lacks the checkpoint receives rank 0's, and
  the resumed run ends with the weights of an uninterrupted one;
- CC clusters once, on rank 0, and every rank trains on its ids.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.data.imagestore import ImageStore
from stages.prepare import PrepareConfig, prepare
from tests.train_fixtures import cli, make_tiny

REPO = Path(__file__).resolve().parent.parent

# `compress-cache ARGS`; with TEST_STOP_AT_STEP=k every rank leaves before step k (a kill between two steps,
# landing at the same point on both ranks, so the interrupted run is the same every time). The code digest is
# pinned: an edit elsewhere in the working tree between the two launches must not count as other code here.
CLI = """
import os, sys
import pipeline.runtime.code_digest as digest
digest.code_digest = lambda: "test-multinode"
stop = int(os.environ.get("TEST_STOP_AT_STEP", "0"))
if stop:
    import stages.train as train
    step = train.Step.__call__
    def stopping(self, i, *args):
        if i == stop:
            raise SystemExit(3)
        return step(self, i, *args)
    train.Step.__call__ = stopping
from stages.cli import main
main(sys.argv[1:], prog_name="compress-cache")
"""

# CC's build on every rank, counting k-means runs; writes {"kmeans": calls, "ids": [...]} to argv[1]
CC = """
import json, sys, torch
import pipeline.evaluation.cluster_assignment as ca
from pipeline.methods import DataInfo, build_method
from pipeline.runtime import distributed
from tests.tiny_student import TinyStudent
distributed.init("cpu")
calls, kmeans = [], ca.kmeans
ca.kmeans = lambda *a, **k: calls.append(1) or kmeans(*a, **k)
rows = torch.nn.functional.normalize(torch.randn(40, 4, generator=torch.Generator().manual_seed(0)), dim=1)
data = DataInfo(num_items=40, train_indices=torch.arange(40).numpy(), num_classes=2, teacher_rows=rows)
method = build_method("cc", TinyStudent(), teacher_dim=4, data=data, hp={"clusters": 4, "seed": 0})
json.dump({"kmeans": len(calls), "ids": method.ids.tolist()}, open(sys.argv[1], "w"))
distributed.cleanup()
"""


def launch(per_rank: list[list], code: str = CLI, extra_env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Run `code` with argv per_rank[r] as rank r of a gloo group; every rank is its node's first process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, argv in enumerate(per_rank):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "WORLD_SIZE": str(len(per_rank)), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **(extra_env or {})}
        procs.append(subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def tiny(module_dir):
    """make_tiny's store, teacher and cache, and other data (150 of the digits) with its own cache."""
    d = make_tiny(module_dir)
    prepare(PrepareConfig(dataset="digits", limit=150, out=d / "other"))
    cli("extract", "--data", d / "other", "--weights", d / "t.pt", "--out", d / "other.zarr", "--batch-size", "64",
        "--device", "cpu", "--no-progress")
    return d


def _fingerprint(store: Path) -> str:
    return ImageStore(store).fingerprint[:12]


def test_extract_refuses_other_data_on_any_rank_before_writing(tiny, tmp_path):
    out = tmp_path / "c.zarr"
    args = ["extract", "--weights", tiny / "t.pt", "--out", out, "--device", "cpu", "--no-progress"]
    ranks = launch([args + ["--data", tiny / "data"], args + ["--data", tiny / "other"]])
    for r in ranks:
        assert r.returncode != 0
        line = r.stderr.strip().splitlines()[-1]
        assert "rank 1 has data fingerprint" in line, r.stderr[-2000:]
        assert _fingerprint(tiny / "other") in line and _fingerprint(tiny / "data") in line
    assert not out.exists()  # no store, no attributes, no rows


def test_extract_refuses_other_teacher_weights(tiny, tmp_path):
    other = tmp_path / "t.pt"
    other.write_bytes((tiny / "t.pt").read_bytes() + b"\0")  # a copy that differs by one byte at the end
    out = tmp_path / "c.zarr"
    args = ["extract", "--data", tiny / "data", "--out", out, "--device", "cpu", "--no-progress"]
    ranks = launch([args + ["--weights", tiny / "t.pt"], args + ["--weights", other]])
    assert all(r.returncode != 0 and "rank 1 has teacher weights sha256" in r.stderr for r in ranks), \
        ranks[0].stderr[-2000:]
    assert not out.exists()


def _train(tiny: Path, out: Path, data: str = "data", cache: str = "t1.zarr", method: str = "compress-2q") -> list:
    return ["train", "--data", tiny / data, "--cache", tiny / cache, "--out", out, "--preset", "tiny",
            "--batch-size", "16", "--epochs", "2", "--checkpoint-every", "2", "--device", "cpu",
            "--no-tensorboard", "--method", method, "--lr", "0.05"]


def test_train_refuses_other_data_on_any_rank_before_writing(tiny, tmp_path):
    """Rank 1 holds other data with a cache of its own, each consistent on its own: refused, nothing written."""
    ranks = launch([_train(tiny, tmp_path / "a"), _train(tiny, tmp_path / "b", "other", "other.zarr")])
    for r in ranks:
        assert r.returncode != 0
        line = r.stderr.strip().splitlines()[-1]
        assert "rank 1 has data fingerprint" in line, r.stderr[-2000:]
        assert _fingerprint(tiny / "other") in line and _fingerprint(tiny / "data") in line
    for out in (tmp_path / "a", tmp_path / "b"):
        assert not any((out / name).exists() for name in ("config.json", "checkpoint.pt", "model.pt", "log.jsonl"))
    assert not (tiny / "t1.zarr.mmap").exists() and not (tiny / "other.zarr.mmap").exists()  # no rows loaded


def _method_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["objects"]["method"]


def test_resume_where_only_rank_0_holds_the_checkpoint(tiny, tmp_path):
    """Node-local --out folders: rank 1's never holds a checkpoint (only rank 0 writes). The resumed run takes
    rank 0's decision and state, and ends where an uninterrupted run ends."""
    ref = launch([_train(tiny, tmp_path / "ref0"), _train(tiny, tmp_path / "ref1")])
    assert all(r.returncode == 0 for r in ref), ref[0].stderr[-3000:] + ref[1].stderr[-3000:]

    run = [_train(tiny, tmp_path / "run0"), _train(tiny, tmp_path / "run1")]
    stopped = launch(run, extra_env={"TEST_STOP_AT_STEP": "5"})
    assert [r.returncode for r in stopped] == [3, 3], stopped[0].stderr[-3000:]
    assert torch.load(tmp_path / "run0/checkpoint.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "run0/model.pt").exists() and not (tmp_path / "run1/checkpoint.pt").exists()

    resumed = launch(run)
    assert all(r.returncode == 0 for r in resumed), resumed[0].stderr[-3000:] + resumed[1].stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "run0/log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "resume"] == [4]
    a, b = _method_state(tmp_path / "ref0/checkpoint.pt"), _method_state(tmp_path / "run0/checkpoint.pt")
    assert a.keys() == b.keys()
    for k in a:  # one thread per process: the same sums in the same order
        assert torch.equal(a[k], b[k]), k
    assert not (tmp_path / "run1/checkpoint.pt").exists()  # rank 1 received the state; it never writes one


def test_cc_clusters_once_on_rank_0_and_every_rank_gets_its_ids(tmp_path):
    ranks = launch([[tmp_path / "r0.json"], [tmp_path / "r1.json"]], code=CC)
    assert all(r.returncode == 0 for r in ranks), ranks[0].stderr[-3000:] + ranks[1].stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    assert (r0["kmeans"], r1["kmeans"]) == (1, 0)
    assert r0["ids"] == r1["ids"] and -1 not in r1["ids"] and len(set(r0["ids"])) > 1
