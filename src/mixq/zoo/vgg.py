"""VGG-16 (Simonyan & Zisserman, configuration D) with torchvision's module names.

``features.N`` are the 13 3x3 convolutions (with bias), their ReLUs and the five
2x2 max pools, numbered as in torchvision (``features.0`` the first conv,
``features.28`` the last); ``avgpool`` is an adaptive average pool to 7x7 (an
identity at 224x224), and ``classifier.0``, ``classifier.3``, ``classifier.6``
are the three Linear layers (ReLU and Dropout between them). A torchvision
state dict loads with every key matching. 138.4 M parameters, 15.47 GMAC per
224x224 image.
"""

from __future__ import annotations

import torch
from torch import nn

# Configuration D: output channels of each 3x3 conv, "M" a 2x2/2 max pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


def _features(cfg: tuple[int | str, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG without BatchNorm: features, 7x7 adaptive avg pool, three-layer classifier."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = _features(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def vgg16(num_classes: int = 1000) -> VGG:
    """VGG-16 (configuration D, no BN) for 224x224 ImageNet inputs, torchvision names."""
    return VGG(VGG16_CFG, num_classes=num_classes)
