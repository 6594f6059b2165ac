"""Teachers: every official key layout, built from a random torchvision ResNet-18, loads to the same embedding
as a hand-loaded reference; every broken file ends in a one-line error."""
import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pipeline.runtime.errors import CompressError
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
from pipeline.models.teachers import load_teacher

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def ref():
    """(torchvision resnet18 with trained-looking BN stats, its state dict, its pooled embedding of X)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 32, 32))
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        z = net.eval()(X)
    return net, sd, z


def _backbone_keys(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _mlp(dims, bn=False):
    """A head state dict in nn.Sequential layout: Linear [, BN], ReLU, Linear."""
    torch.manual_seed(1)
    layers = [torch.nn.Linear(dims[0], dims[1])] + ([torch.nn.BatchNorm1d(dims[1])] if bn else []) + \
             [torch.nn.ReLU(), torch.nn.Linear(dims[1], dims[2])]
    head = torch.nn.Sequential(*layers)
    if bn:
        head[1].running_mean.normal_()
        head[1].running_var.uniform_(0.5, 2)
    return head.eval(), head.state_dict()


def _save(tmp_path, obj, name="ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _assert_same(model, z_ref):
    with torch.no_grad():
        z = model(X)
    assert z.shape == z_ref.shape
    assert F.cosine_similarity(z, z_ref).min() >= 0.9999


def _moco(sd, head_sd):
    inner = {f"module.encoder_q.{k}": v for k, v in _backbone_keys(sd).items()}
    inner |= {f"module.encoder_q.fc.{k}": v for k, v in head_sd.items()}
    inner |= {f"module.encoder_k.{k}": v.clone() for k, v in _backbone_keys(sd).items()}
    inner |= {"module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"state_dict": inner, "arch": "resnet18", "epoch": 200,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]}}


def test_moco_v2_backbone_and_head(ref, tmp_path):
    net, sd, z = ref
    head, head_sd = _mlp((512, 512, 128))
    path = _save(tmp_path, _moco(sd, head_sd))
    model, identity = load_teacher(path)
    assert identity["format"] == "moco" and identity["arch"] == "resnet18" and identity["embed_dim"] == 512
    _assert_same(model, z)
    model, identity = load_teacher(path, "resnet18", "moco", embedding="head")
    assert identity["embed_dim"] == 128 and identity["embedding"] == "head"
    _assert_same(model, head(z))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_moco_v1_single_linear_head(ref, tmp_path):
    net, sd, z = ref
    fc = torch.nn.Linear(512, 128)
    model, identity = load_teacher(_save(tmp_path, _moco(sd, fc.state_dict())), embedding="head")
    assert identity["format"] == "moco"
    _assert_same(model, fc(z).detach())


def test_swav_drops_prototypes_and_offers_its_head(ref, tmp_path):
    net, sd, z = ref
    head, head_sd = _mlp((512, 256, 64), bn=True)
    ckpt = {f"module.{k}": v for k, v in _backbone_keys(sd).items()}
    ckpt |= {f"module.projection_head.{k}": v for k, v in head_sd.items()}
    ckpt["module.prototypes.weight"] = torch.randn(30, 64)
    path = _save(tmp_path, ckpt)
    model, identity = load_teacher(path)
    assert identity["format"] == "swav" and identity["arch"] == "resnet18"
    _assert_same(model, z)
    model, _ = load_teacher(path, embedding="head")
    with torch.no_grad():
        _assert_same(model, head(z))


def test_simclr_converted_layout_has_unit_preprocessing_and_no_head(ref, tmp_path):
    net, sd, z = ref
    path = _save(tmp_path, {"state_dict": sd})  # converted SimCLR: torchvision keys incl. the supervised fc
    model, identity = load_teacher(path)
    assert identity["format"] == "simclr"
    pre = identity["preprocessing"]
    assert pre["mean"] == [0.0, 0.0, 0.0] and pre["std"] == [1.0, 1.0, 1.0]
    _assert_same(model, z)
    with pytest.raises(CompressError, match="no projection head"):
        load_teacher(path, embedding="head")


def test_dino_backbone_and_full_training_checkpoint(ref, tmp_path):
    net, sd, z = ref
    model, identity = load_teacher(_save(tmp_path, _backbone_keys(sd), "dino.pth"))
    assert identity["format"] == "dino"
    assert identity["preprocessing"] == default_preprocessing(224, 0.875, resize="bicubic")  # DINO's eval resize
    _assert_same(model, z)
    teacher = {f"module.backbone.{k}": v for k, v in _backbone_keys(sd).items()}
    teacher |= {"module.head.mlp.0.weight": torch.randn(8, 512), "module.head.last_layer.weight_g": torch.ones(4, 1)}
    full = {"teacher": teacher, "student": dict(teacher), "epoch": 3, "args": argparse.Namespace(arch="resnet18")}
    model, identity = load_teacher(_save(tmp_path, full, "dino_full.pth"))
    assert identity["format"] == "dino"
    _assert_same(model, z)


def test_torchvision_resnet_and_any_model_by_name(ref, tmp_path):
    net, sd, z = ref
    model, identity = load_teacher(_save(tmp_path, sd))
    assert identity["format"] == "torchvision" and identity["arch"] == "resnet18"
    _assert_same(model, z)
    torch.manual_seed(0)
    mnv2 = torchvision.models.mobilenet_v2().eval()
    path = _save(tmp_path, mnv2.state_dict(), "mnv2.pth")
    with pytest.raises(CompressError, match="pass --teacher"):  # only ResNets are recognised from keys
        load_teacher(path)
    model, identity = load_teacher(path, "mobilenet_v2")
    assert identity["embed_dim"] == 1280 and identity["format"] == "torchvision"
    mnv2.classifier = mnv2.classifier[:-1]
    _assert_same(model, mnv2(X).detach())


def test_native_model_file(tmp_path):
    backbone = build_backbone("resnet18", small_input=True, seed=5).eval()
    path = tmp_path / "model.pt"
    save_model(path, backbone, default_preprocessing(32))
    model, identity = load_teacher(path)
    assert identity["format"] == "compress-cache" and identity["small_input"] is True
    assert identity["preprocessing"] == default_preprocessing(32)
    _assert_same(model, backbone(X).detach())
    with pytest.raises(CompressError, match="holds a resnet18"):
        load_teacher(path, arch="resnet50")


def test_missing_num_batches_tracked_is_tolerated(ref, tmp_path):
    net, sd, z = ref
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    _assert_same(load_teacher(_save(tmp_path, old))[0], z)


# ---- broken files: one clear error each ----

def test_truncated_file(ref, tmp_path):
    path = _save(tmp_path, ref[1])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CompressError, match="truncated, corrupted or not a PyTorch file"):
        load_teacher(path)


def test_checkpoint_of_another_architecture(ref, tmp_path):
    with pytest.raises(CompressError, match=r"look like a resnet18.*missing") as e:
        load_teacher(_save(tmp_path, ref[1]), arch="resnet50")
    assert "\n" not in str(e.value)


def test_wrong_prefix_is_named(ref, tmp_path):
    path = _save(tmp_path, {f"model.{k}": v for k, v in ref[1].items()})
    with pytest.raises(CompressError, match="extra prefix 'model.'"):
        load_teacher(path, arch="resnet18")
    with pytest.raises(CompressError, match="expected prefix module.encoder_q."):
        load_teacher(_save(tmp_path, ref[1], "tv.pth"), weights_format="moco")


def test_unexpected_key_is_listed(ref, tmp_path):
    sd = dict(ref[1], **{"extra.weight": torch.zeros(3)})
    with pytest.raises(CompressError, match=r"1 unexpected \(extra.weight\)"):
        load_teacher(_save(tmp_path, sd))


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    path = _save(tmp_path, {"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Payload(marker)})
    with pytest.raises(CompressError, match="needs code execution"):
        load_teacher(path)
    assert not marker.exists()


def test_unknown_format_and_embedding(ref, tmp_path):
    path = _save(tmp_path, ref[1])
    with pytest.raises(CompressError, match="unknown weights format"):
        load_teacher(path, weights_format="byol")
    with pytest.raises(CompressError, match="unknown embedding"):
        load_teacher(path, embedding="fc7")
    with pytest.raises(CompressError, match="does not exist"):
        load_teacher(tmp_path / "nope.pth")
