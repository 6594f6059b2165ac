"""ResNet-18 with fewer channels: a teacher small enough to pretrain on 2 CPU cores and to commit (<= 20 MB).

`resnet18_w32` is ResNet-18 with every channel count halved (32-64-128-256, a 256-d embedding, 2.8 M parameters,
1/4 of ResNet-18's compute); `resnet18_w16` quarters them (0.7 M). Built from torchvision's `ResNet` forward and
`BasicBlock`, so parameter names are torchvision's and everything that handles a ResNet handles these.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

# architecture name (as given to --arch / --student) -> base width (torchvision's ResNet-18: 64)
ARCHS = {"resnet18_w32": 32, "resnet18_w16": 16}


class NarrowResNet18(ResNet):
    """ResNet-18 whose four stages have width, 2 width, 4 width, 8 width channels."""

    def __init__(self, width: int, num_classes: int = 1000):
        nn.Module.__init__(self)  # ResNet.__init__ hard-codes 64 channels; set the same attributes here
        self._norm_layer = nn.BatchNorm2d
        self.dilation, self.groups, self.base_width = 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_narrow_resnet18(arch: str) -> NarrowResNet18:
    """`resnet18_w32` | `resnet18_w16` -> a randomly initialised network with its classifier."""
    return NarrowResNet18(ARCHS[arch])
