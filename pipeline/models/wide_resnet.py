"""ResNet-50 at SimCLR widths (x1, x2, x4): the teachers SimCLR released, which torchvision does not build.

SimCLR multiplies *every* channel count by the width, stem included: ResNet-50 x4 has a 256-channel first
convolution and a 2048 * 4 = 8192-d pooled feature. torchvision's `wide_resnet50_2` is a different network (only
the bottleneck's inner 3x3 is widened; stem and outputs stay at x1), so it cannot hold these weights.

The module reuses torchvision's `ResNet` forward and `Bottleneck` blocks, so parameter names are exactly
torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ..., `layer4.2.bn3`, `fc`): converted SimCLR checkpoints in
torchvision layout load into it without renaming, and `pipeline.models.backbones` treats it like any torchvision ResNet.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

WIDTHS = (1, 2, 4)
_DEPTHS = (3, 4, 6, 3)  # ResNet-50


class WideResNet50(ResNet):
    """ResNet-50 with all channel counts multiplied by `width` (SimCLR's ResNet-50 (1x/2x/4x))."""

    def __init__(self, width: int = 1, num_classes: int = 1000):
        if width not in WIDTHS:
            raise ValueError(f"SimCLR ResNet-50 width must be one of {WIDTHS}, got {width}")
        nn.Module.__init__(self)  # ResNet.__init__ hard-codes a 64-channel stem; set the same attributes here
        self._norm_layer = nn.BatchNorm2d
        self.dilation, self.groups, self.base_width = 1, 1, 64
        self.width = width
        self.inplanes = 64 * width
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # _make_layer reads and advances self.inplanes; planes are the bottleneck widths before expansion (x4)
        self.layer1 = self._make_layer(Bottleneck, 64 * width, _DEPTHS[0])
        self.layer2 = self._make_layer(Bottleneck, 128 * width, _DEPTHS[1], stride=2)
        self.layer3 = self._make_layer(Bottleneck, 256 * width, _DEPTHS[2], stride=2)
        self.layer4 = self._make_layer(Bottleneck, 512 * width, _DEPTHS[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * width * Bottleneck.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation, so a random x1 behaves like resnet50()
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


# architecture name (as given to --teacher / --student) -> width
ARCHS = {f"resnet50x{w}": w for w in WIDTHS}


def build_wide_resnet50(arch: str) -> WideResNet50:
    """`resnet50x1` | `resnet50x2` | `resnet50x4` -> a randomly initialised network with its classifier."""
    return WideResNet50(ARCHS[arch])
