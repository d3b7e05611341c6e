"""MobileNet-V1 (Howard et al., 2017) for 224x224 ImageNet inputs, in torchvision's naming style.

The network of the paper's Table 1 (width 1.0): ``features.0`` is the 3x3/2
stem (conv, BN, ReLU as ``features.0.0/1/2``), ``features.1`` ... ``features.13``
are the 13 depthwise-separable blocks, each ``features.N.0`` a 3x3 depthwise conv,
``features.N.1`` its BN, ``features.N.2`` a ReLU, ``features.N.3`` the 1x1
pointwise conv, ``features.N.4`` its BN, ``features.N.5`` a ReLU; then global
average pooling and ``classifier``, the 1024 -> 1000 Linear. 4,231,976
parameters, 568.7 MMAC per image (the paper's 569 M mult-adds, 4.2 M parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from mixq.zoo.mobilenet import init_mobilenet

# (output channels, stride of the depthwise conv) of the 13 depthwise-separable blocks (Table 1).
DW_SEPARABLE_SETTING: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MobileNetV1(nn.Module):
    """MobileNet-V1 (width 1.0): stem, 13 depthwise-separable blocks, average pool, Linear."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(3, 32, 3, 2))]
        cin = 32
        for cout, stride in DW_SEPARABLE_SETTING:
            blocks.append(nn.Sequential(*_conv_bn_relu(cin, cin, 3, stride, groups=cin),
                                        *_conv_bn_relu(cin, cout, 1, 1)))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cin, num_classes)
        init_mobilenet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)  # type: ignore[no-any-return]


def mobilenet_v1(num_classes: int = 1000) -> MobileNetV1:
    """MobileNet-V1 for 224x224 ImageNet inputs (4.23 M parameters, 568.7 MMAC)."""
    return MobileNetV1(num_classes=num_classes)
