"""CNV: a small FINN-style CNN for 1x28x28 inputs (Fashion-MNIST), with shipped weights.

Layout (module names as in ``model.named_modules()``)::

    features.0  Conv2d(1->32, 3x3, pad 1, no bias)   28x28
    features.1  BatchNorm2d(32)        features.2  ReLU
    features.3  Conv2d(32->32, 3x3, pad 1, no bias)  28x28
    features.4  BatchNorm2d(32)        features.5  ReLU
    features.6  MaxPool2d(2)                         -> 14x14
    features.7  Conv2d(32->64, 3x3, pad 1, no bias)  14x14
    features.8  BatchNorm2d(64)        features.9  ReLU
    features.10 Conv2d(64->64, 3x3, pad 1, no bias)  14x14
    features.11 BatchNorm2d(64)        features.12 ReLU
    features.13 MaxPool2d(2)                         -> 7x7
    (flatten: 64*7*7 = 3136)
    classifier.0 Linear(3136->128, no bias)
    classifier.1 BatchNorm1d(128)      classifier.2 ReLU
    classifier.3 Linear(128->10)

MACs per image (in_channels=1, num_classes=10), by hand, ``H*W*Cout*Cin*k*k``::

    features.0    28*28*32*1*9   =    225,792
    features.3    28*28*32*32*9  =  7,225,344
    features.7    14*14*64*32*9  =  3,612,672
    features.10   14*14*64*64*9  =  7,225,344
    classifier.0  3136*128       =    401,408
    classifier.3  128*10         =      1,280
    total                        = 18,691,840   (:data:`CNV_MACS`)

Parameters: 468,138 (466,432 weights of conv/linear layers). The first FC
layer has 128 outputs, not 256: that halves the largest layer, keeps the fp32
state dict at ~1.9 MB (shipped as is, exactly what training produced) and
costs no measurable accuracy on Fashion-MNIST.

Convolutions and the first linear layer have no bias because a BatchNorm
follows each of them (BN folding gives them one). The forward pass is
``features -> flatten -> classifier``, so ``torch.fx.symbolic_trace`` captures it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixq.errors import DataError, ModelError
from mixq.validate import load_state
from mixq.zoo.pretrained import check_fits

__all__ = ["CNV", "CNV_MACS", "WEIGHTS_PATH", "cnv", "cnv_macs", "load_pretrained"]

WEIGHTS_PATH = Path(__file__).parent / "weights" / "cnv_fmnist.pt"

CONV_CHANNELS = (32, 32, 64, 64)
FC_WIDTH = 128
CNV_MACS = 18_691_840


def cnv_macs(in_channels: int = 1, num_classes: int = 10) -> int:
    """Multiply-accumulates of one 28x28 forward pass, from the layer formula (see module doc)."""
    c1, c2, c3, c4 = CONV_CHANNELS
    convs = 28 * 28 * 9 * (c1 * in_channels + c2 * c1) + 14 * 14 * 9 * (c3 * c2 + c4 * c3)
    return convs + c4 * 7 * 7 * FC_WIDTH + FC_WIDTH * num_classes


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class CNV(nn.Module):
    """``features`` (4 conv-BN-ReLU blocks, 2 max-pools) -> flatten -> ``classifier`` (2 linear layers)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        c1, c2, c3, c4 = CONV_CHANNELS
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, c1),
            *_conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(c2, c3),
            *_conv_bn_relu(c3, c4),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c4 * 7 * 7, FC_WIDTH, bias=False),
            nn.BatchNorm1d(FC_WIDTH),
            nn.ReLU(),
            nn.Linear(FC_WIDTH, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)  # type: ignore[no-any-return]


def cnv(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A freshly initialised :class:`CNV` (PyTorch default initialisation)."""
    return CNV(num_classes=num_classes, in_channels=in_channels)


def load_pretrained(model: nn.Module, path: str | Path | None = None) -> nn.Module:
    """Load the shipped Fashion-MNIST weights (or the state dict at ``path``) into ``model``; eval mode.

    The weights were produced by ``mixq train`` (see ``weights/cnv_fmnist.json``
    for the command, seed and accuracy) for ``cnv(num_classes=10, in_channels=1)``
    with inputs normalised by :func:`mixq.data.normalize_gray`. A missing,
    corrupt or mismatching file raises :class:`ModelError` naming the path; NaN, Inf or
    absurd values raise :class:`NumericError` naming the path and the tensor.
    """
    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    try:
        state = load_state(p)
    except DataError as e:  # one line: "PATH: not a PyTorch state dict (...)"
        raise ModelError(str(e)) from e
    check_fits(model, state, str(p))
    model.load_state_dict(state, strict=True)
    return model.eval()
