"""`eval --probe augmented`: the paper's linear protocol, views rendered every epoch through the frozen network."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.evaluation.augmented_probe import AugmentedProbeConfig, train_augmented_probe
from stages.cli import main
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore, write_image_store
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
from stages.evaluate import EvaluateConfig, evaluate
from stages.prepare import PrepareConfig, prepare


@pytest.fixture(scope="module")
def colours(module_dir):
    """96 images whose class is their colour (red, green, blue), with a bright square at a random place."""
    rng = np.random.default_rng(0)
    n = 96
    labels = np.arange(n) % 3
    images = rng.integers(0, 40, (n, 12, 12, 3)).astype(np.uint8)
    images[np.arange(n), :, :, labels] += 120
    for i in range(n):
        y, x = rng.integers(0, 8, 2)
        images[i, y:y + 4, x:x + 4] = 255
    root = module_dir
    write_image_store(root, images, labels, (np.arange(n) % 4 == 3).astype(np.uint8), [f"c{i}" for i in range(n)],
                      dataset="colours", classes=["r", "g", "b"], source="test")
    return ImageStore(root)


class Recorder(torch.nn.Module):
    """Mean colour per channel, through a BatchNorm (so a backbone left in train mode would change), and a
    record of every input it saw."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.bn(x).mean((2, 3))


class MeanColour(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


def test_views_are_rendered_every_epoch_through_a_frozen_backbone(colours):
    store = colours
    train = store.indices("train")
    pre = default_preprocessing(8)
    net = Recorder().eval()
    with torch.no_grad():
        train_x = torch.cat([net(torch.from_numpy(store.read(int(i), int(i) + 1)).permute(0, 3, 1, 2).float())
                             for i in train])
    net.seen.clear()
    net.train()  # left in train mode by a caller: the probe must put it in eval mode itself
    cfg = AugmentedProbeConfig(epochs=2, batch_size=32, seed=0)
    predict, record = train_augmented_probe(net, store, train, pre, train_x, store.labels[train], 3, cfg)
    per_epoch = -(-len(train) // 32)  # the last partial batch is kept: every image once per epoch
    assert len(net.seen) == 2 * per_epoch and record["iterations"] == 2 * per_epoch
    assert all(x.shape[1:] == (3, 8, 8) for x in net.seen)
    first, second = torch.cat(net.seen[:per_epoch]), torch.cat(net.seen[per_epoch:])
    assert len(first) == len(second) == len(train)
    # a fresh crop of each image each epoch: the two epochs' sets of inputs share no image
    assert torch.cdist(first.flatten(1), second.flatten(1)).min() > 1e-3
    assert not net.training and torch.equal(net.bn.running_mean, torch.zeros(3))  # eval mode, nothing moved
    assert record["probe"] == "augmented" and record["weight_decay"] == 1e-4 and record["lr"] == 0.01
    assert record["crop_scale"] == [0.08, 1.0] and record["flip"] is True
    assert record["reported"].startswith("last epoch")


def test_learns_the_colour_classes(colours):
    """Through an average-colour backbone the augmented views keep the class: the paper's schedule learns it."""
    store = colours
    train, val = store.indices("train"), store.indices("val")

    net = MeanColour()
    pre = default_preprocessing(8)
    from tests.embed_store import embed_store
    x = embed_store(net, store, pre, 64)
    predict, _ = train_augmented_probe(net, store, train, pre, x[train], store.labels[train], 3,
                                       AugmentedProbeConfig(epochs=20, batch_size=16))
    assert np.mean(predict(x[val]) == store.labels[val]) > 0.9


def test_augmented_probe_on_the_digits_through_the_cli(tmp_path):
    prepare(PrepareConfig(dataset="digits", limit=300, out=tmp_path / "data"))
    store = ImageStore(tmp_path / "data")
    save_model(tmp_path / "m.pt", build_backbone("resnet18_w16", small_input=True, seed=0), default_preprocessing(8),
               data_fingerprint=store.fingerprint, method="test")
    out = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["eval", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "m.pt"),
                                  "--out", str(out), "--probe", "augmented", "--probe-epochs", "2",
                                  "--no-probe-hflip", "--device", "cpu", "--batch-size", "128"])
    assert r.exit_code == 0, r.output
    assert "linear (augmented probe)" in r.output
    m = json.loads(out.read_text())
    linear = m["protocols"]["linear"]
    assert linear["probe"] == "augmented" and linear["protocol"].startswith("augmented")
    assert linear["epochs"] == 2 and linear["weight_decay"] == 1e-4 and linear["momentum"] == 0.9
    assert linear["flip"] is False and linear["crop_scale"] == [0.08, 1.0]
    assert linear["iterations"] == 2 * -(-len(store.indices("train")) // 256)
    assert linear["reported"].startswith("last epoch") and 0 <= m["linear"] <= 100
    assert m["provenance"]["arguments"]["probe"] == "augmented"


def test_a_teacher_cache_cannot_take_the_augmented_probe(colours, tmp_path):
    with pytest.raises(CompressError, match="--probe augmented.*--model"):
        evaluate(EvaluateConfig(data=colours.root, out=tmp_path / "t.json", cache=tmp_path / "t.zarr",
                                probe="augmented"))
    r = CliRunner().invoke(main, ["eval", "--data", str(colours.root), "--random-init", "resnet18",
                                  "--out", str(tmp_path / "x.json"), "--probe", "fancy"])
    assert r.exit_code != 0 and "fancy" in r.output
