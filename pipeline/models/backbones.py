"""Backbones for teachers and students: torchvision models that return their pooled feature.

The embedding of every model is its pooled backbone output (method.md): ResNet-18 512, ResNet-50 2048,
MobileNetV2 1280, AlexNet 4096 (ReLU(fc7)). Classification heads are removed here, once, so no caller has to
know where each family keeps its classifier.

`small_input=True` adapts the stem to 8-64 px images (a 3x3 stride-1 first convolution, no max-pool), the usual
CIFAR-style change; the weights of every other layer keep their torchvision names and shapes. The default is the
ImageNet stem (7x7 stride-2 conv and max-pool for ResNets), the paper's network.

No embedding passes through active dropout or stochastic depth (method.md): torchvision's AlexNet keeps
Dropout(0.5) before fc6 and fc7 and MobileNetV2 Dropout(0.2) before its classifier; `_without_dropout` replaces
every such layer by Identity (same indices, so state-dict keys do not change), so a student's embedding, its
momentum copy's and a teacher's are deterministic functions of the batch in train mode as in eval mode.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from pipeline.runtime.errors import CompressError
from pipeline.models.narrow_resnet import ARCHS as NARROW_ARCHS, build_narrow_resnet18
from pipeline.models.wide_resnet import ARCHS as WIDE_ARCHS, build_wide_resnet50

# Names offered in --help; any other torchvision classification model name is accepted too.
KNOWN_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "alexnet")
# Architectures built here rather than by torchvision: SimCLR's ResNet-50 widths (pipeline/models/wide_resnet.py) and
# narrow ResNet-18s for CPU-sized teachers (pipeline/models/narrow_resnet.py).
EXTRA_ARCHS = {**{name: build_wide_resnet50 for name in WIDE_ARCHS},
               **{name: build_narrow_resnet18 for name in NARROW_ARCHS}}


def available_archs() -> set[str]:
    """Every name build_backbone accepts: torchvision classification models plus EXTRA_ARCHS (besides the DINO /
    DINOv2 ViTs of pipeline.models.vit and `timm:NAME`, checked by their modules)."""
    return set(torchvision.models.list_models(module=torchvision.models)) | set(EXTRA_ARCHS)


def build_classifier_net(arch: str) -> nn.Module:
    """The full network of `arch`, classifier included (random weights): what a checkpoint file holds."""
    if arch in EXTRA_ARCHS:
        return EXTRA_ARCHS[arch](arch)
    return torchvision.models.get_model(arch, weights=None)


class Backbone(nn.Module):
    """A torchvision model without its classifier: `forward(x) -> (N, embed_dim)` pooled features.

    `bn_groups` (training only, not saved): BatchNorm statistics over that many equal slices of the batch, as
    that many DDP processes without SyncBN compute them - so one process can reproduce an N-process run.
    """

    def __init__(self, arch: str, net: nn.Module, embed_dim: int, small_input: bool):
        super().__init__()
        self.arch = arch
        self.small_input = small_input
        self.embed_dim = embed_dim
        self.net = net
        self.bn_groups = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_groups > 1 and self._batch_statistics():
            return torch.cat([self.net(part) for part in x.chunk(self.bn_groups)]).flatten(1)
        return self.net(x).flatten(1)

    def _batch_statistics(self) -> bool:
        """Whether BatchNorm normalises by the batch: in train mode, and in a momentum copy's eval-but-BN mode."""
        return any(m.training for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def describe(self) -> dict:
        return {"arch": self.arch, "small_input": self.small_input, "embed_dim": self.embed_dim}


def _strip_classifier(arch: str, net: nn.Module) -> int:
    """Replace the final classification layer by Identity in place; return the feature width."""
    if isinstance(getattr(net, "fc", None), nn.Linear):  # resnet, resnext, regnet, shufflenet, googlenet
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return dim
    head = getattr(net, "classifier", None)
    if isinstance(head, nn.Linear):  # densenet
        net.classifier = nn.Identity()
        return head.in_features
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        # mobilenet, efficientnet, convnext, vgg, alexnet: drop only the last Linear, keep fc7+ReLU etc.
        dim = head[-1].in_features
        net.classifier = nn.Sequential(*list(head.children())[:-1])
        return dim
    heads = getattr(net, "heads", None)
    if isinstance(heads, nn.Sequential) and isinstance(heads[-1], nn.Linear):  # vision transformer
        dim = heads[-1].in_features
        net.heads = nn.Identity()
        return dim
    raise CompressError(f"architecture {arch!r}: cannot find its classifier to remove; "
                        f"use one of {', '.join(KNOWN_ARCHS)}")


def _without_dropout(net: nn.Module) -> None:
    """Replace every dropout layer by Identity and switch off stochastic depth, in place."""
    from torchvision.ops import StochasticDepth
    for name, child in net.named_children():
        if isinstance(child, nn.modules.dropout._DropoutNd):
            setattr(net, name, nn.Identity())
        else:
            if isinstance(child, StochasticDepth):  # efficientnet, convnext, swin, maxvit
                child.p = 0.0
            _without_dropout(child)
    for attr in ("dropout", "attention_dropout"):  # vision transformers keep rates as plain floats too
        if isinstance(getattr(net, attr, None), float):
            setattr(net, attr, 0.0)


def _small_input_stem(arch: str, net: nn.Module) -> None:
    if isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool"):  # resnet family
        old = net.conv1
        net.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        return
    if isinstance(getattr(net, "conv1", None), nn.Sequential) and isinstance(net.conv1[0], nn.Conv2d) \
            and hasattr(net, "maxpool"):  # shufflenet: its stem conv is already 3x3; keep it, drop the stride
        net.conv1[0].stride = (1, 1)
        net.maxpool = nn.Identity()
        return
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        first = features[0]
        conv = first if isinstance(first, nn.Conv2d) else next(
            (m for m in first.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None:  # mobilenet / efficientnet / alexnet: keep the layer, drop the stride
            conv.stride = (1, 1)
            if arch == "alexnet":  # its 11x11 stride-4 stem and max-pools would leave nothing of 32 px
                features[0] = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1)
                features[2] = nn.Identity()
            return
    raise CompressError(f"architecture {arch!r} has no small-input variant; drop --small-input "
                        f"or use one of {', '.join(KNOWN_ARCHS)}")


def _outside(arch: str):
    """The module that builds `arch` when torchvision does not: pipeline.models.vit or pipeline.models.timm_models."""
    from pipeline.models import timm_models, vit  # they build on Backbone: imported here, not at the top
    return next((m for m in (vit, timm_models) if m.owns(arch)), None)


def build_backbone(arch: str, small_input: bool = False, seed: int | None = None) -> Backbone:
    """A randomly initialised backbone (seeded when `seed` is given) for `arch`."""
    outside = _outside(arch)
    if outside is not None:  # DINO/DINOv2 ViTs and timm models: their modules build, strip and seed them
        return outside.build_backbone(arch, small_input, seed)
    if arch not in available_archs():
        raise CompressError(f"unknown architecture {arch!r}; use one of {', '.join(KNOWN_ARCHS)} "
                            f"or another torchvision classification model name")
    with torch.random.fork_rng(devices=[]):  # seeding here must not disturb the caller's RNG stream
        if seed is not None:
            torch.manual_seed(seed)
        net = build_classifier_net(arch)
        dim = _strip_classifier(arch, net)
        _without_dropout(net)
        if small_input:
            _small_input_stem(arch, net)
    return Backbone(arch, net, dim, small_input)


def check_input_size(model: nn.Module, size: int, what: str) -> None:
    """Fail early, in one line, when `size` px inputs shrink to nothing inside the network (AlexNet's or
    ShuffleNet's strides at 8-16 px), instead of a shape error deep inside a training step."""
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics: nothing in the model changes
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size, device=next(model.parameters()).device))
    except RuntimeError as e:
        raise CompressError(f"{what} cannot take {size} px inputs ({str(e).splitlines()[0][:120]}); "
                            f"use a larger --input-size or the small-input stem") from None
    finally:
        model.train(was_training)
