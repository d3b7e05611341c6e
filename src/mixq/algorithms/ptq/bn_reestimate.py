"""BatchNorm re-estimation.

Quantization shifts the mean and the spread of every channel, and the running statistics
stored in BatchNorm no longer describe the quantized network:

* :func:`reestimate_bn` recomputes the running statistics of every BatchNorm of a model
  that still has them (not folded; e.g. during QAT or after pruning) from calibration data,
  as a cumulative average, with the rest of the model in eval mode.
* :func:`restore_channel_stats` is the same correction for a BN-folded quantized model: it
  gives every output channel of a quantized layer the mean and standard deviation that
  the float layer has on the float model's input, by scaling the channel (its weights *and*
  its scales, so the integer codes stay the same) and shifting its bias. Layer after layer,
  so each sees the corrected layers before it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.algorithms.ptq._common import (
    as_tensor,
    batches,
    channel_moments,
    each_layer,
    inputs_at,
    layers_in_forward_order,
    quantized_input,
)
from mixq.errors import ModelError
from mixq.modes import eval_mode
from mixq.nn import QConv2d, QLinear


@torch.no_grad()
def reestimate_bn(model: nn.Module, calib: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """Recompute the running mean/var of every BatchNorm of ``model`` in place from ``calib``."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        raise ModelError(f"reestimate_bn: {type(model).__name__} has no BatchNorm with running statistics")
    momenta = [m.momentum for m in bns]
    with eval_mode(model):  # restored module-wide: the BatchNorms take the model's mode back
        try:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over all batches
                m.train()
            for xb in batches(as_tensor(calib), batch_size):
                model(xb)
        finally:
            for m, mom in zip(bns, momenta, strict=True):
                m.momentum = mom
    return model


def _out(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, w, b)
    return torch.nn.functional.linear(x, w, b)


class _Moments:
    """Running per-channel sums for mean and standard deviation."""

    def __init__(self) -> None:
        self.s: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.n = 0

    def add(self, y: torch.Tensor) -> None:
        s, s2, n = channel_moments(y)
        self.s = s if self.s is None else self.s + s
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += n

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.s is not None and self.s2 is not None
        mean = self.s / max(self.n, 1)
        var = (self.s2 / max(self.n, 1) - mean * mean).clamp(min=0.0)
        return mean, var.sqrt()


@torch.no_grad()
def restore_channel_stats(qmodel: nn.Module, fmodel: nn.Module, calib: torch.Tensor, *,
                          batch_size: int = 32, max_gain: float = 2.0, scale_std: bool = True) -> dict[str, float]:
    """Match every quantized layer's per-channel output mean (and, with ``scale_std``, standard
    deviation) to the float layer's, in forward order (in place). Gains are clamped to
    ``[1/max_gain, max_gain]``. Returns per layer the largest gain deviation ``|k - 1|``."""
    data = as_tensor(calib)
    fmodel.eval()
    with eval_mode(qmodel):
        return _restore_channel_stats(qmodel, fmodel, data, batch_size, max_gain, scale_std)


def _restore_channel_stats(qmodel: nn.Module, fmodel: nn.Module, data: torch.Tensor, batch_size: int,
                           max_gain: float, scale_std: bool) -> dict[str, float]:
    report: dict[str, float] = {}
    for name in each_layer("ptq restore_stats", layers_in_forward_order(qmodel, data)):
        q = qmodel.get_submodule(name)
        if not isinstance(q, QConv2d | QLinear) or not q.formats:
            continue
        f = fmodel.get_submodule(name)
        if not isinstance(f, nn.Conv2d | nn.Linear):
            raise ModelError(f"restore_channel_stats: float layer {name!r} is a {type(f).__name__}")
        acc_q, acc_f = _Moments(), _Moments()
        for xb in batches(data, batch_size):
            acc_q.add(_out(q, quantized_input(q, inputs_at(qmodel, q, xb)), q.quantized_weight(), q.bias))
            acc_f.add(_out(f, inputs_at(fmodel, f, xb), f.weight, f.bias))
        mq, sq = acc_q.mean_std()
        mf, sf = acc_f.mean_std()
        k = torch.ones_like(mq)
        if scale_std:
            ok = (sq > 1e-12) & (sf > 1e-12)
            k = torch.where(ok, sf / sq.clamp(min=1e-12), k).clamp(1.0 / max_gain, max_gain)
        bias = q.bias.double() if q.bias is not None else torch.zeros_like(mq)
        new_bias = k * (bias - mq) + mf
        shape = (-1,) + (1,) * (q.weight.dim() - 1)
        q.weight.mul_(k.reshape(shape).to(q.weight.dtype))
        q.w_scales.mul_(k.reshape(1, *shape).to(q.w_scales.dtype))
        if q.bias is None:
            q.bias = nn.Parameter(new_bias.to(q.weight.dtype), requires_grad=q.weight.requires_grad)
        else:
            q.bias.copy_(new_bias.to(q.bias.dtype))
        report[name] = float((k - 1.0).abs().max())
    return report
