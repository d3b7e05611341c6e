"""Activation calibration with the observers of :mod:`mixq.quant` (through the layers' ``QAct``).

Every quantized layer's input quantizer observes the calibration batches (min-max,
percentile, MSE or KL, as its plan says) and then freezes its scale. A few hundred
images are enough for stable ranges.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.ptq._common import as_tensor, batches
from mixq.errors import DataError
from mixq.graph.convert import act_quantizers, calibrate


def calibrate_activations(qmodel: nn.Module, calib: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """Observe ``calib`` with every activation quantizer of ``qmodel`` and freeze the scales (in place);
    reported as the progress task ``ptq calibrate``, advancing per batch."""
    data = as_tensor(calib)
    if data.shape[0] == 0:
        raise DataError("calibration data: 0 inputs given")
    parts = list(batches(data, batch_size))
    quantizers = len(act_quantizers(qmodel))
    with progress.task("ptq calibrate", total=len(parts)) as t:
        def counted() -> Iterator[torch.Tensor]:
            for xb in parts:
                yield xb
                t.advance(images=int(xb.shape[0]), quantizers=quantizers)
        return calibrate(qmodel, counted())


def activation_scales(qmodel: nn.Module) -> list[float]:
    """The frozen scale of every activation quantizer, in registration order."""
    return [float(a.scale) for a in act_quantizers(qmodel)]
