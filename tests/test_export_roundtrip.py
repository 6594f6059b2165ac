"""A student exported by this project is a teacher `extract` can use: `export --format state-dict` then
`extract --weights EXPORT` gives the model file's own rows, with the preprocessing recorded in the sidecar."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stages.cli import main
from tests.embed_store import embed_store
from pipeline.data.imagestore import ImageStore, write_image_store
from pipeline.models.modelfile import default_preprocessing, load_model, save_model
from pipeline.models.backbones import build_backbone


@pytest.fixture(scope="module")
def data(module_dir):
    root = module_dir
    images = np.random.default_rng(0).integers(0, 256, (6, 20, 20, 3), dtype=np.uint8)
    write_image_store(root / "data", images, [0, 1] * 3, [0] * 6, [f"i{i}" for i in range(6)],
                      dataset="tiny", classes=["x", "y"], source="test")
    return root


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


# mobilenet_v2 cannot be told from its keys at all; resnet18_w16 with the small-input stem has a 3x3 conv1 that
# no ImageNet checkpoint has; crop 0.75 and 16 px differ from every official format's preprocessing.
@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18_w16"])
def test_state_dict_export_extracts_to_the_model_files_rows(data, tmp_path, arch):
    backbone = build_backbone(arch, small_input=True, seed=1)
    with torch.no_grad():  # BN statistics away from their initial values
        backbone.train()(torch.randn(4, 3, 16, 16))
    pre = default_preprocessing(16, crop_fraction=0.75)
    save_model(tmp_path / "run" / "model.pt", backbone.eval(), pre, method="compress-2q")
    out = tmp_path / "student.pth"
    _run("export", tmp_path / "run", "--format", "state-dict", "--out", out)
    result = _run("extract", "--data", data / "data", "--weights", out, "--out", tmp_path / "c.zarr",
                  "--dtype", "float32", "--device", "cpu", "--no-progress")
    assert "compress-cache-export" in result.output

    from cache.load import load_embeddings
    z, attrs = load_embeddings(tmp_path / "c.zarr")
    assert attrs["teacher"]["arch"] == arch and attrs["teacher"]["small_input"] is True
    assert attrs["teacher"]["preprocessing"] == pre
    model, meta = load_model(tmp_path / "run" / "model.pt")
    ref = embed_store(model, ImageStore(data / "data"), meta["preprocessing"])  # its centre crops, l2-normalised
    assert (z.float() - ref).abs().max() <= 1e-5


def test_export_sidecar_of_another_file_is_refused(data, tmp_path):
    save_model(tmp_path / "run" / "model.pt", build_backbone("resnet18_w16", True, seed=0).eval(),
               default_preprocessing(16))
    out = tmp_path / "student.pth"
    _run("export", tmp_path / "run", "--format", "state-dict", "--out", out)
    side = json.loads(out.with_name("student.pth.json").read_text())
    torch.save({k: v + 1 for k, v in torch.load(out, weights_only=True).items()}, out)  # replaced afterwards
    result = CliRunner().invoke(main, ["extract", "--data", str(data / "data"), "--weights", str(out),
                                       "--out", str(tmp_path / "c.zarr"), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 1 and "sidecar of another file" in result.output and "Traceback" not in result.output
    assert side["sha256"] and not (tmp_path / "c.zarr").exists()
