"""Export: the deployed file must reproduce the training-time embedding, and carry its preprocessing."""
import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from stages.cli import main
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone


@pytest.fixture(scope="module")
def run(module_dir):
    run_dir = module_dir
    backbone = build_backbone("resnet18", small_input=True, seed=3).eval()
    with torch.no_grad():  # move BN statistics away from their initial values, so the export must carry them
        backbone.train()(torch.randn(4, 3, 32, 32))
    backbone.eval()
    save_model(run_dir / "model.pt", backbone, default_preprocessing(32), method="compress-2q",
               data_fingerprint="abc")
    return run_dir, backbone


def _probe():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_torchscript_gives_the_training_embedding(run, tmp_path):
    run_dir, backbone = run
    out = tmp_path / "student.pt"
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "torchscript", "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = torch.jit.load(str(out))
    with torch.no_grad():
        assert torch.allclose(exported(_probe()), backbone(_probe()), atol=1e-5)
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert side["preprocessing"] == default_preprocessing(32)
    assert side["embed_dim"] == 512 and side["arch"] == "resnet18" and side["small_input"] is True
    assert side["check"]["checked"] and side["check"]["max_abs_diff"] <= 1e-4


def test_state_dict_loads_into_plain_torchvision(run):
    run_dir, backbone = run
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "state-dict"])
    assert result.exit_code == 0, result.output
    out = run_dir / "export" / "resnet18.pth"
    sd = torch.load(out, weights_only=True)
    assert not any(k.startswith("net.") for k in sd)
    net = build_backbone("resnet18", small_input=True).net
    net.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.allclose(net.eval()(_probe()), backbone(_probe()), atol=1e-5)
    assert json.loads((run_dir / "export" / "resnet18.pth.json").read_text())["method"] == "compress-2q"


@pytest.mark.skipif(importlib.util.find_spec("onnx") is not None, reason="onnx is installed here")
def test_onnx_without_the_package_is_a_clear_error(run):
    result = CliRunner().invoke(main, ["export", str(run[0]), "--format", "onnx"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "onnx package" in result.output and "Traceback" not in result.output


def test_run_dir_without_model_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--format", "torchscript"])
    assert result.exit_code == 1 and "holds no model.pt" in result.output


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed")
def test_onnx_export_is_checked_by_onnxruntime(run, tmp_path):
    import onnxruntime
    run_dir, backbone = run
    out = tmp_path / "student.onnx"
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert side["check"]["checked"] and side["check"]["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(out))
    got = session.run(None, {session.get_inputs()[0].name: _probe().numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), backbone(_probe()), atol=1e-4)
