"""Output-aware activation ranges: each input quantizer's clipping chosen by the error it causes in
the layer's output.

An activation observer (min-max, percentile, MSE, KL) sets a quantizer's range from the activation
alone, so every channel counts alike; but a channel the next layer multiplies by large weights
matters more than one it nearly ignores. Here, after calibration, each quantized layer in forward
order gets the per-tensor scale ``r · s`` (``s`` the observer's, ``r`` on a grid in ``(0, 1]``) that
minimizes ``||W (Q(x) - x)||²`` over a few calibration inputs, ``x`` being what the layer receives
in the partly quantized model (so the upstream choices are already in it). Only the scale changes:
the format, and so the hardware, stays as planned.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixq.algorithms.ptq._common import batches, each_layer, inputs_at, is_quant_layer, layers_in_forward_order
from mixq.errors import DataError
from mixq.quant import fake_quant


def _op(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with its float weights and no bias (a conv pads its own way)."""
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, layer.weight, None)
    return F.linear(x, layer.weight)


@torch.no_grad()
def output_aware_act_ranges(qmodel: nn.Module, data: torch.Tensor, *, images: int = 16, steps: int = 16,
                            lowest: float = 0.25, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Rescale every calibrated input quantizer of ``qmodel`` (in place, forward order); returns per
    layer the chosen ratio and the output error (summed squares) before and after."""
    if data.shape[0] == 0:
        raise DataError("output-aware activation ranges: 0 calibration inputs given")
    x = data[:images]
    ratios = torch.linspace(lowest, 1.0, steps).tolist()

    def tuned(m: Any) -> bool:
        iq = getattr(m, "input_quant", None)
        return is_quant_layer(m) and iq is not None and bool(iq.calibrated)

    names = [n for n in layers_in_forward_order(qmodel, x[:1]) if tuned(qmodel.get_submodule(n))]
    report: dict[str, dict[str, float]] = {}
    for n in each_layer("ptq act_ranges", names):
        layer: Any = qmodel.get_submodule(n)
        iq = layer.input_quant
        inp = torch.cat([inputs_at(qmodel, layer, xb) for xb in batches(x, batch_size)])
        ref = _op(layer, inp)
        base = iq.scale.clone()

        errs = [float(((_op(layer, fake_quant(inp, iq.fmt, base * r)) - ref) ** 2).sum()) for r in ratios]
        j = min(range(len(ratios)), key=lambda i: (errs[i], -ratios[i]))
        iq.scale = (base * ratios[j]).reshape(())
        report[n] = {"ratio": float(ratios[j]), "error_before": errs[-1], "error_after": errs[j]}
    return report
