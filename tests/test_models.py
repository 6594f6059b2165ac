"""Students and teachers expose their pooled feature at the documented width (method.md)."""
import pytest
import torch

from pipeline.models.backbones import build_backbone, build_classifier_net
from pipeline.models.wide_resnet import WideResNet50

WIDTHS = {"alexnet": 4096, "mobilenet_v2": 1280, "resnet18": 512, "resnet34": 512, "resnet50": 2048,
          "shufflenet_v2_x0_5": 1024, "resnet50x1": 2048, "resnet50x2": 4096, "resnet50x4": 8192}


@pytest.mark.parametrize("arch", list(WIDTHS))
def test_pooled_embedding_width_at_224(arch):
    with torch.device("meta"):  # shapes only: ResNet-50 x4 would need 1.5 GB of real weights
        backbone = build_backbone(arch)
        z = backbone(torch.empty(2, 3, 224, 224))
    assert backbone.embed_dim == WIDTHS[arch] and tuple(z.shape) == (2, WIDTHS[arch])


@pytest.mark.parametrize("arch", ["alexnet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "shufflenet_v2_x0_5"])
def test_small_input_variant_at_32px(arch):
    with torch.device("meta"):
        backbone = build_backbone(arch, small_input=True)
        assert tuple(backbone(torch.empty(2, 3, 32, 32)).shape) == (2, WIDTHS[arch])


def test_shufflenet_small_input_keeps_the_stem_conv_and_drops_its_downsampling():
    imagenet, small = (build_backbone("shufflenet_v2_x0_5", small_input=s, seed=0) for s in (False, True))
    assert small.net.conv1[0].stride == (1, 1) and isinstance(small.net.maxpool, torch.nn.Identity)
    assert small.net.conv1[0].weight.shape == imagenet.net.conv1[0].weight.shape  # same layer, same names
    # 8 px: the small-input stem keeps 4x4 maps into stage 3, the ImageNet stem leaves 1x1
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert small.net.stage2(small.net.maxpool(small.net.conv1(x))).shape[-1] == 4
        assert imagenet.net.stage2(imagenet.net.maxpool(imagenet.net.conv1(x))).shape[-1] == 1


def test_small_input_real_forward():
    backbone = build_backbone("mobilenet_v2", small_input=True, seed=0).eval()
    with torch.no_grad():
        z = backbone(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 1280) and torch.isfinite(z).all()


@pytest.mark.parametrize("width", [2, 4])
def test_simclr_widths_keep_torchvision_names(width):
    with torch.device("meta"):
        wide, x1 = WideResNet50(width).state_dict(), build_classifier_net("resnet50").state_dict()
    assert list(wide) == list(x1)
    assert wide["conv1.weight"].shape == (64 * width, 3, 7, 7)
    assert wide["layer4.2.conv3.weight"].shape == (2048 * width, 512 * width, 1, 1)
    assert wide["fc.weight"].shape == (1000, 2048 * width)


def test_simclr_x1_is_torchvision_resnet50():
    torch.manual_seed(0)
    wide = WideResNet50(1).eval()
    import torchvision
    tv = torchvision.models.resnet50().eval()
    tv.load_state_dict(wide.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(wide(x), tv(x), atol=1e-5)


def test_an_input_too_small_for_the_architecture_is_a_one_line_error():
    from pipeline.runtime.errors import CompressError
    from pipeline.models.backbones import check_input_size
    alexnet = build_backbone("alexnet", small_input=False, seed=0)
    with pytest.raises(CompressError, match="alexnet cannot take 16 px"):
        check_input_size(alexnet, 16, "alexnet")
    resnet = build_backbone("resnet18", small_input=False, seed=0).train()
    check_input_size(resnet, 16, "resnet18")
    assert resnet.training  # the check leaves the mode as it found it


@pytest.mark.parametrize("arch,width", [("resnet18_w32", 32), ("resnet18_w16", 16)])
def test_narrow_resnet18_has_torchvision_names_and_scaled_widths(arch, width):
    narrow, full = build_classifier_net(arch), build_classifier_net("resnet18")
    assert [n for n, _ in narrow.named_parameters()] == [n for n, _ in full.named_parameters()]
    for (name, p), (_, q) in zip(narrow.named_parameters(), full.named_parameters()):
        if name.endswith("weight") and p.ndim == 4:  # every convolution's channels scale by width / 64
            assert p.shape[0] * 64 == q.shape[0] * width, name
    net = build_backbone(arch, small_input=True)
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 8 * width)


def test_bn_groups_normalise_each_slice_of_the_batch_on_its_own_in_training_only():
    net = build_backbone("resnet18", small_input=True, seed=0)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    net.train()
    whole = net(x)
    net.bn_groups = 2
    grouped = net(x)
    halves = torch.cat([net.net(x[:4]), net.net(x[4:])]).flatten(1)
    torch.testing.assert_close(grouped, halves, atol=0, rtol=0)
    assert not torch.allclose(grouped, whole, atol=1e-3)  # batch statistics over 4 images are not over 8
    net.eval()
    torch.testing.assert_close(net(x), torch.cat([net(x[:4]), net(x[4:])]), atol=1e-5, rtol=0)
    assert "bn_groups" not in str(net.state_dict().keys())  # a training setting, not part of the model
