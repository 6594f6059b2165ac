"""Architecture and prefix read from the keys alone: a DDP-saved torchvision ResNet (every key `module.`) and the
narrow ResNet-18s load without --teacher, to the same embedding as the network that was saved."""
import pytest
import torch

from pipeline.models.checkpoint_formats import infer_arch
from pipeline.models.backbones import build_classifier_net
from pipeline.models.teachers import load_teacher

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _trained_looking(arch):
    torch.manual_seed(0)
    net = build_classifier_net(arch)
    with torch.no_grad():  # BN statistics away from their initial values, so a wrong load would show
        net.train()(torch.randn(4, 3, 64, 64))
    return net.eval()


def _pooled(net):
    fc, net.fc = net.fc, torch.nn.Identity()
    with torch.no_grad():
        z = net(X)
    net.fc = fc
    return z


@pytest.mark.parametrize("with_fc", [True, False])
def test_ddp_saved_torchvision_resnet_loads_without_teacher(tmp_path, with_fc):
    net = _trained_looking("resnet18")
    sd = {f"module.{k}": v for k, v in net.state_dict().items() if with_fc or not k.startswith("fc.")}
    torch.save(sd, tmp_path / "ddp.pth")
    model, identity = load_teacher(tmp_path / "ddp.pth")
    assert identity["arch"] == "resnet18"
    with torch.no_grad():
        assert torch.allclose(model(X), _pooled(net), atol=1e-5)


@pytest.mark.parametrize("arch, dim", [("resnet18_w16", 128), ("resnet18_w32", 256)])
def test_narrow_resnets_are_inferred(tmp_path, arch, dim):
    net = _trained_looking(arch)
    assert infer_arch(net.state_dict()) == arch
    torch.save(net.state_dict(), tmp_path / "narrow.pth")
    model, identity = load_teacher(tmp_path / "narrow.pth")
    assert identity["arch"] == arch and identity["embed_dim"] == dim
    with torch.no_grad():
        assert torch.allclose(model(X), _pooled(net), atol=1e-5)


def test_basic_block_resnet_of_an_unknown_width_is_not_guessed():
    sd = dict(build_classifier_net("resnet18_w16").state_dict())
    sd["conv1.weight"] = torch.zeros(24, 3, 7, 7)  # no ResNet-18 of base width 24 is built here
    assert infer_arch(sd) is None
