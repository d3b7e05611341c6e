"""Shared fixtures for the engine and export tests: quantized zoo models under the golden configs.

Models are built once per session (``functools.lru_cache``). CNV uses the shipped
Fashion-MNIST weights when they are present (else a seeded random init) and real
Fashion-MNIST images; MobileNetV2 its real ImageNet weights on real photos at 32x32;
ResNet-18 a seeded random init on the same photos.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from mixq import api, data, zoo
from mixq.algorithms.msq import assign_rows
from mixq.errors import ModelError
from mixq.formats import parse_format
from mixq.graph.bnfold import fold_bn

# name -> (weight format, activation format, SP2 row format or None)
CONFIGS: dict[str, tuple[str, str, str | None]] = {
    "w8a8": ("fixed8n", "ufixed8", None),
    "w4a4": ("fixed4n", "ufixed4", None),
    "msq4": ("fixed4n", "ufixed4", "sp2_4"),
    "binary": ("binary", "ufixed4", None),
}
MODELS = ("cnv", "resnet18", "mobilenet_v2")
SIZE = 32  # input resolution of the ImageNet models in tests (small: the tests run on 2 CPU cores)


@functools.lru_cache(maxsize=4)
def float_model(name: str) -> tuple[nn.Module, bool]:
    """(BN-folded float model in eval mode, whether it has real weights)."""
    torch.manual_seed(0)
    real = True
    try:
        m = zoo.load(name, pretrained=name in ("cnv", "mobilenet_v2"))
    except ModelError:
        if name == "mobilenet_v2":
            pytest.skip("MobileNetV2 weights not installed")
        m, real = zoo.load(name), False
    return fold_bn(m.eval()).eval(), real


@functools.lru_cache(maxsize=4)
def inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration batch, test batch) of real images for ``name``."""
    if name == "cnv":
        calib, _ = data.load_fmnist_subset(data.__path__[0] + "/assets/fmnist_train_calib.npz")
        test, _ = data.load_fmnist_subset()
        return data.normalize_gray(calib[:256]), data.normalize_gray(test[:64])
    photos = data.calibration_set(24, size=SIZE, seed=1)
    return photos[:16], photos[16:]


@functools.lru_cache(maxsize=16)
def quantized(name: str, config: str) -> nn.Module:
    """The calibrated fake-quant model of ``name`` under ``config`` (MSQ: half the rows SP2)."""
    w, a, alt = CONFIGS[config]
    model, _ = float_model(name)
    calib, _ = inputs(name)
    plan = api.default_plan(name, model, calib[:16], weight=parse_format(w), act=parse_format(a),
                            weight_alt=parse_format(alt) if alt else None, alt_ratio=0.5 if alt else 0.0)
    if alt:
        plan = assign_rows(model, plan, fold=False)
    return api.quantize(model, plan, calib, fold=False)


def test_support_configs_are_complete() -> None:
    assert set(CONFIGS) == {"w8a8", "w4a4", "msq4", "binary"}


class TinyNet(nn.Module):
    """Every op the engine knows in a few layers: ReLU6, depthwise conv, residual add of two grids,
    functional max-pool, concat, average pool, spatial mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 8, 1)
        self.branch = nn.Conv2d(8, 4, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = x + self.pw(torch.relu(self.dw(x)))
        x = torch.nn.functional.max_pool2d(x, 2)
        z = torch.cat([x, torch.nn.functional.relu(self.branch(x))], 1)
        z = self.pool(z).mean((2, 3))
        return self.fc(z)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=8)
def tiny(config: str = "w8a8") -> tuple[nn.Module, torch.Tensor]:
    """(calibrated fake-quant TinyNet, test inputs)."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    folded = fold_bn(model)
    x = torch.randn(40, 3, 16, 16)
    w, a, alt = CONFIGS.get(config, ("fixed8n", "ufixed8", "sp2_4"))  # "msq8": W8 with SP2 rows
    plan = api.default_plan("tiny", folded, x[:16], weight=parse_format(w), act=parse_format(a),
                            weight_alt=parse_format(alt) if alt else None, alt_ratio=0.5 if alt else 0.0)
    if alt:
        plan = assign_rows(folded, plan, fold=False)
    return api.quantize(folded, plan, x[:32], fold=False), x[32:]
