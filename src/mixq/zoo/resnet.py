"""ResNets with torchvision's module names: ResNet-18/50/152 (ImageNet) and ResNet-20 (CIFAR-10).

``resnet18`` reproduces torchvision's ``resnet18`` layout exactly (``conv1``,
``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0`` ... ``fc``), so a
torchvision state dict loads with every key matching (``strict=True``).
``resnet50`` and ``resnet152`` are torchvision's bottleneck ResNets (v1.5: the
stride on the 3x3 ``conv2``; ``layerN.M.conv1/conv2/conv3``, ``bn1..bn3``,
``downsample.0/1``): 25,557,032 and 60,192,808 parameters, 4.09 and 11.51 GMAC
per 224x224 image.

``resnet20`` is the CIFAR ResNet-20 of He et al. (2016, section 4.2): a 3x3
stem of 16 channels, three stages of three basic blocks (16, 32, 64 channels,
32x32 -> 16x16 -> 8x8), global average pooling and a 64 -> 10 classifier. Where a
block changes shape its shortcut is, by default, a 1x1 stride-2 convolution
plus BatchNorm (option B, named ``downsample`` like torchvision's, 0.27 M
parameters, 40.81 MMAC per 32x32 image). ``shortcut="A"`` gives the paper's
parameter-free option A instead: subsample by 2 and zero-pad the new channels
(0.27 M parameters, 40.55 MMAC).

Residual sums are written ``out + identity`` (not in place) so FX tracing and
hooks both see them; every ReLU is an ``nn.ReLU`` module (a block's ``relu`` is
called twice, as in torchvision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import ModelError


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand (x4), each with BN, and a shortcut (torchvision v1.5)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class PadShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: take every ``stride``-th pixel, zero-pad new channels.

    Parameter-free; a module (not a lambda) so it deep-copies, pickles and
    appears by name in a captured graph.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cout < cin:
            raise ModelError(f"PadShortcut: cout={cout} < cin={cin}")
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.cout - self.cin
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet (stem 7x7/2 conv + 3x3/2 max pool) with ``block`` "basic" or "bottleneck"."""

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 1000, block: str = "basic") -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ModelError(f"ResNet: block must be one of {', '.join(BLOCKS)}, got {block!r}")
        self.block = BLOCKS[block]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * self.block.expansion, num_classes)
        _init_resnet(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        stage = _stage(self.inplanes, planes, blocks, stride, "B", self.block)
        self.inplanes = planes * self.block.expansion
        return stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem, three stages of ``n`` basic blocks (16/32/64 ch)."""

    def __init__(self, n: int, num_classes: int = 10, shortcut: str = "B") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ModelError(f"CifarResNet: shortcut must be 'A' (pad) or 'B' (1x1 conv), got {shortcut!r}")
        self.shortcut = shortcut
        self.inplanes = 16
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_resnet(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        stage = _stage(self.inplanes, planes, blocks, stride, self.shortcut)
        self.inplanes = planes
        return stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _stage(inplanes: int, planes: int, blocks: int, stride: int, shortcut: str,
           block: type[BasicBlock] | type[Bottleneck] = BasicBlock) -> nn.Sequential:
    """``blocks`` blocks from ``inplanes`` to ``planes * block.expansion`` channels, the first with ``stride``
    and, where the shape changes, a shortcut: zero-padding ('A') or a 1x1 conv + BN ('B')."""
    cout = planes * block.expansion
    downsample: nn.Module | None = None
    if stride != 1 or inplanes != cout:
        if shortcut == "A":
            downsample = PadShortcut(inplanes, cout, stride)
        else:
            downsample = nn.Sequential(_conv1x1(inplanes, cout, stride), nn.BatchNorm2d(cout))
    layers: list[nn.Module] = [block(inplanes, planes, stride, downsample)]
    layers += [block(cout, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _init_resnet(model: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 for 224x224 ImageNet inputs (11.7 M parameters, 1.814 GMAC), torchvision names."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 for 224x224 ImageNet inputs (25.56 M parameters, 4.09 GMAC), torchvision names."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, block="bottleneck")


def resnet152(num_classes: int = 1000) -> ResNet:
    """ResNet-152 for 224x224 ImageNet inputs (60.19 M parameters, 11.51 GMAC), torchvision names."""
    return ResNet((3, 8, 36, 3), num_classes=num_classes, block="bottleneck")


def resnet20(num_classes: int = 10, shortcut: str = "B") -> CifarResNet:
    """CIFAR ResNet-20 for 32x32 inputs; ``shortcut`` "B" (1x1 conv, default) or "A" (zero pad)."""
    return CifarResNet(3, num_classes=num_classes, shortcut=shortcut)
