"""Teachers through `compress-cache extract`: the cached rows equal a hand-loaded reference, and broken
checkpoints end in `Error: ...`, exit code 1, no traceback."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner

from pipeline.data.augment import center_crops, render
from stages.cli import main
from pipeline.data.imagestore import ImageStore, write_image_store

pytest.importorskip("stages.cli.extract")


@pytest.fixture(scope="module")
def setup(module_dir):
    root = module_dir
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    write_image_store(root / "data", images, [0, 1, 0, 1], [0, 0, 1, 1], ["a", "b", "c", "d"],
                      dataset="tiny", classes=["x", "y"], source="test")
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    sd = net.state_dict()
    ckpt = {"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
            "arch": "resnet18"}
    torch.save(ckpt, root / "moco.pth")
    return root, net, sd


def _extract(root, weights, out, *extra):
    return CliRunner().invoke(main, ["extract", "--data", str(root / "data"), "--weights", str(weights),
                                     "--out", str(root / out), "--dtype", "float32", "--batch-size", "2",
                                     "--device", "cpu", "--no-progress", *extra])


def test_moco_checkpoint_through_extract_matches_reference(setup):
    from cache.load import load_embeddings
    root, net, _ = setup
    result = _extract(root, root / "moco.pth", "moco.zarr")
    assert result.exit_code == 0, result.output
    z, attrs = load_embeddings(root / "moco.zarr")
    pre = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": 224, "crop_fraction": 0.875}
    x = render(torch.from_numpy(ImageStore(root / "data").read(0, 4)), center_crops(4, 0.875), 224,
               pre["mean"], pre["std"])
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        ref = F.normalize(net.eval()(x), dim=1)
    assert F.cosine_similarity(z.float(), ref).min() >= 0.9999


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated"), ("other_arch", "missing"), ("prefix", "extra prefix"), ("code", "code execution")])
def test_broken_checkpoints_fail_cleanly(setup, case, message):
    root, _, sd = setup
    path = root / f"{case}.pth"
    extra = []
    if case == "truncated":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "other_arch":
        torch.save(sd, path)
        extra = ["--teacher", "resnet34"]
    elif case == "prefix":
        torch.save({f"backbone.net.{k}": v for k, v in sd.items()}, path)
        extra = ["--teacher", "resnet18"]
    else:
        torch.save({"x": _Payload(str(root / "ran"))}, path)
    result = _extract(root, path, f"{case}.zarr", *extra)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error:") and message in result.output
    assert "Traceback" not in result.output
    assert not (root / "ran").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
