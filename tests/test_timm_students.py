"""timm models as students: built without classifier, dropout or stochastic depth, trained from a ViT teacher's
cache, resumed after SIGKILL to the same bits, exported and read back as a teacher; a ViT teacher run live;
names that would need the hub refused; nothing opens a network connection."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.runtime.errors import CompressError
from pipeline.models.backbones import build_backbone
from stages.prepare import PrepareConfig, prepare
from tests.train_fixtures import kill_at_first_checkpoint, run
from tests.vit_reference import official_shapes, random_weights

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # bitwise equality needs one thread
STUDENT = "timm:mobilenetv3_small_100"


@pytest.fixture(scope="module")
def tiny(module_dir):
    """200 digits, a random DINO-layout ViT teacher (patch 4, grid 4) and its cache at 8 px (grid 2)."""
    d = module_dir
    prepare(PrepareConfig(dataset="digits", limit=200, out=d / "data"))
    torch.save(random_weights(official_shapes(patch=4, width=64, depth=2, grid=4)), d / "vit.pth")
    run("extract", "--data", d / "data", "--weights", d / "vit.pth", "--input-size", 8, "--out", d / "vit.zarr",
        "--device", "cpu", "--no-progress")
    return d


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("arch, small_input, dim", [
    (STUDENT, True, 1024), ("timm:efficientnet_b0", False, 1280), ("timm:resnet18", True, 512),
    ("timm:vit_tiny_patch16_224", False, 192), ("timm:convnext_atto", False, 320)])
def test_no_stochastic_layer_in_the_embedding(arch, small_input, dim, no_network):
    student = build_backbone(arch, small_input, seed=0).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = student(x), student(x)
    assert a.shape == (4, dim) == (4, student.embed_dim)
    assert torch.equal(a, b)  # train mode: BatchNorm uses the batch, but nothing is drawn at random


def test_small_input_only_where_it_means_something():
    stem = build_backbone(STUDENT, small_input=True).net.conv_stem
    assert stem.stride == (1, 1)
    for arch in ("timm:vit_tiny_patch16_224", "timm:convnext_atto"):
        with pytest.raises(CompressError, match="no small-input variant"):
            build_backbone(arch, small_input=True)


@pytest.mark.parametrize("arch, message", [
    ("timm:hf-hub:timm/mobilenetv3_small_100.lamb_in1k", "--weights FILE"),
    ("timm:mobilenetv3_smal_100", "timm has no model")])
def test_names_that_need_the_hub_or_do_not_exist(arch, message):
    with pytest.raises(CompressError, match=message):
        build_backbone(arch)


def _train_cmd(d: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stages", "train", "--data", str(d / "data"), "--cache", str(d / "vit.zarr"),
            "--student", STUDENT, "--out", str(out), "--preset", "tiny", "--epochs", "2", "--checkpoint-every", "2",
            "--device", "cpu", "--no-tensorboard", "--method", "compress-2q"]


def test_timm_student_trains_from_a_vit_cache_resumes_after_sigkill_and_exports(tiny, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(tiny, reference), env=ENV, check=True, capture_output=True)
    killed = tmp_path / "killed"
    kill_at_first_checkpoint(_train_cmd(tiny, killed), killed, ENV)
    subprocess.run(_train_cmd(tiny, killed), env=ENV, check=True, capture_output=True)
    assert '"event": "resume"' in (killed / "log.jsonl").read_text()
    a = torch.load(reference / "model.pt", weights_only=True)
    b = torch.load(killed / "model.pt", weights_only=True)
    assert a["arch"] == STUDENT and a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["teacher"]["format"] == "dino" and a["teacher"]["arch"] == "vit-p4-w64-d2-g4"

    run("export", killed, "--format", "torchscript", "--out", tmp_path / "s.torchscript.pt")
    if importlib.util.find_spec("onnxruntime") is not None:  # the export is refused unless onnxruntime agrees
        run("export", killed, "--format", "onnx", "--out", tmp_path / "s.onnx")
    run("export", killed, "--format", "state-dict", "--out", tmp_path / "s.pth")
    out = run("extract", "--data", tiny / "data", "--weights", tmp_path / "s.pth", "--out", tmp_path / "s.zarr",
              "--dtype", "float32", "--device", "cpu", "--no-progress").output
    assert STUDENT in out and "compress-cache-export" in out


def test_live_vit_teacher(tiny, tmp_path):
    run("train", "--data", tiny / "data", "--student", "resnet18_w16", "--method", "compress-1q", "--preset", "tiny",
        "--steps", "2", "--teacher-source", "live", "--teacher-weights", tiny / "vit.pth", "--device", "cpu",
        "--no-tensorboard", "--out", tmp_path / "live")
    meta = torch.load(tmp_path / "live" / "model.pt", weights_only=True)
    assert meta["teacher"]["format"] == "dino" and meta["teacher"]["embed_dim"] == 64
