"""MobileNetV2 (Sandler et al., 2018) with torchvision's module names.

The layout reproduces torchvision's ``mobilenet_v2`` (width 1.0) exactly:
``features.0`` is the 3x3/2 stem (conv, BN, ReLU6), ``features.1`` ...
``features.17`` are inverted-residual blocks whose layers sit in
``features.N.conv.M`` (``conv.0`` the 1x1 expansion as conv-BN-ReLU6 when the
expansion ratio is not 1, then the 3x3 depthwise conv-BN-ReLU6, the 1x1
linear projection conv and its BN), ``features.18`` the 1x1 conv to 1280
channels, and ``classifier.1`` the final Linear (after ``classifier.0``, a
Dropout). A torchvision state dict, e.g. ``mobilenet_v2-b0353104.pth``, loads
with every key matching. 3.5 M parameters, 300.8 MMAC per 224x224 image.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion ratio t, output channels c, repeats n, first stride s) of the paper's Table 2.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor``, never more than 10 % below ``v`` (torchvision's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> ReLU6, children named ``0``, ``1``, ``2``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project, plus the input when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)  # type: ignore[no-any-return]


def init_mobilenet(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation, in module order: convs Kaiming-normal (fan out), BN weights 1
    and biases 0, linear layers N(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV2(nn.Module):
    """MobileNetV2 for 224x224 ImageNet inputs, torchvision names and initialisation."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_mobilenet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 (width 1.0) with torchvision's module names; see :mod:`mixq.zoo.pretrained` for weights."""
    return MobileNetV2(num_classes=num_classes)
