"""Activation calibration with the observers of :mod:`mixq.quant` (through the layers' ``QAct``).

Every quantized layer's input quantizer observes the calibration batches (min-max,
percentile, MSE or KL, as its plan says) and then freezes its scale. A few hundred
images are enough for stable ranges.
"""

from __future__ import annotations

import torch
from torch import nn

from mixq.algorithms.ptq._common import as_tensor, batches
from mixq.errors import DataError
from mixq.graph.convert import act_quantizers, calibrate


def calibrate_activations(qmodel: nn.Module, calib: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """Observe ``calib`` with every activation quantizer of ``qmodel`` and freeze the scales (in place)."""
    data = as_tensor(calib)
    if data.shape[0] == 0:
        raise DataError("calibration data: 0 inputs given")
    return calibrate(qmodel, batches(data, batch_size))


def activation_scales(qmodel: nn.Module) -> list[float]:
    """The frozen scale of every activation quantizer, in registration order."""
    return [float(a.scale) for a in act_quantizers(qmodel)]
