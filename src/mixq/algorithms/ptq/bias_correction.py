"""Bias correction: remove the mean output error that weight quantization adds to every channel.

With ``ε = W̃ - W`` a layer's output error is ``ε x``, whose mean ``ε E[x]`` is in general not
zero (Nagel et al., DFQ, 2019; Banner et al., 2019). Subtracting it from the bias makes the
quantized layer unbiased:

* :func:`empirical_bias_correction` measures ``E[ε x_q]`` on calibration data, at every layer
  in one pass (``x_q`` the layer's quantized input), like Brevitas' ``bias_correction_mode``;
  ``mode="network"`` instead matches the mean of every layer's output to the float model's on
  its own float input, layer after layer (also removes the mean drift that activation
  quantization and earlier layers cause, and keeps what AdaRound's asymmetric reconstruction
  compensated; one float pass plus one streamed pass).
* :func:`analytic_bias_correction` is data free: ``E[x]`` comes from the BatchNorm statistics
  of the layers before (:func:`expected_input_means` propagates ``N(β, γ²)`` through ReLU,
  clipped ReLU, pooling, flatten, residual adds and concatenations).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq import progress
from mixq.algorithms.ptq._common import (
    as_tensor,
    batches,
    channel_mean,
    each_layer,
    layers_in_forward_order,
)
from mixq.algorithms.ptq._stream import visit_layers
from mixq.algorithms.ptq.cle import ChannelStats, ClippedReLU, column_sums
from mixq.errors import MixqError
from mixq.graph import capture
from mixq.modes import eval_mode
from mixq.nn import QConv2d, QLinear


def _apply(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, w, None)
    return torch.nn.functional.linear(x, w)


@torch.no_grad()
def _shift_bias(layer: QConv2d | QLinear, delta: torch.Tensor) -> None:
    """``bias -= delta`` (adds a bias to a layer that has none)."""
    d = delta.to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(-d, requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.sub_(d)


def _on_quantized_input(layer: nn.Module, fn: Callable[[torch.Tensor], None]) -> torch.utils.hooks.RemovableHandle:
    """Call ``fn`` with the layer's quantized input on every forward (a hook on its input quantizer,
    so the activation is not quantized twice)."""
    iq = getattr(layer, "input_quant", None)
    if iq is not None:
        return iq.register_forward_hook(lambda _m, _i, out: fn(out.detach()))  # type: ignore[no-any-return]
    return layer.register_forward_pre_hook(lambda _m, inp: fn(inp[0].detach()))


def _float_bias(fmodel: nn.Module | None, name: str, layer: QConv2d | QLinear) -> torch.Tensor:
    """The bias before any correction: the float model's, else the layer's own (zeros if none)."""
    src = fmodel.get_submodule(name) if fmodel is not None else layer
    b = getattr(src, "bias", None)
    if isinstance(b, torch.Tensor):
        return b.detach().double().clone()
    return torch.zeros(layer.weight.shape[0], dtype=torch.float64)


@torch.no_grad()
def _set_bias(layer: QConv2d | QLinear, bias: torch.Tensor) -> None:
    b = bias.to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(b, requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(b)


def _float_weight(fmodel: nn.Module | None, name: str, layer: QConv2d | QLinear) -> torch.Tensor:
    if fmodel is None:
        return layer.weight.detach()
    ref = fmodel.get_submodule(name)
    w = getattr(ref, "weight", None)
    if not isinstance(w, torch.Tensor) or w.shape != layer.weight.shape:
        raise MixqError(f"bias correction: float model layer {name!r} does not match the quantized layer")
    return w.detach()


def quant_layers(qmodel: nn.Module) -> list[tuple[str, QConv2d | QLinear]]:
    return [(n, m) for n, m in qmodel.named_modules() if isinstance(m, QConv2d | QLinear) and m.formats]


@torch.no_grad()
def empirical_bias_correction(qmodel: nn.Module, calib: torch.Tensor, fmodel: nn.Module | None = None, *,
                              mode: str = "layer", batch_size: int = 32, passes: int = 1) -> dict[str, float]:
    """Correct every quantized layer's bias from calibration data (in place); returns per layer the
    largest absolute correction.

    ``fmodel``: the float model (same layer names) holding the unquantized weights and biases;
    needed once the quantized layers' float weights were overwritten (AdaRound), and for
    ``mode="network"``. In ``layer`` mode the bias becomes ``b - E[ε x_q]`` with ``b`` the float
    bias; a correction moves the inputs of the layers after it a little, and ``passes > 1``
    measures again with the corrected layers before (converging to zero mean error everywhere).
    """
    data = as_tensor(calib)
    with eval_mode(qmodel):
        out: dict[str, float] = {}
        if mode == "layer":
            layers = quant_layers(qmodel)
            ref_bias = {n: _float_bias(fmodel, n, m) for n, m in layers}
            eps = {n: (m.quantized_weight().detach() - _float_weight(fmodel, n, m)) for n, m in layers}
            data_batches = list(batches(data, batch_size))
            with progress.task("ptq bias_correction", total=max(1, passes) * len(data_batches)) as task:
                for p in range(max(1, passes)):
                    sums = {n: torch.zeros(m.weight.shape[0], dtype=torch.float64) for n, m in layers}
                    count = {n: 0 for n, _ in layers}
                    handles = []
                    for n, m in layers:
                        def observe(xq: torch.Tensor, mod: nn.Module = m, n: str = n,
                                    sums: dict[str, torch.Tensor] = sums, count: dict[str, int] = count) -> None:
                            # E[ε x] over batch and positions = ε applied to the batch-mean input (linearity;
                            # exact with zero padding too): one image's worth of work per batch
                            d = _apply(mod, xq.mean(dim=0, keepdim=True) if xq.dim() == 4 else xq, eps[n])
                            k = xq.shape[0] if xq.dim() == 4 else d.numel() // d.shape[-1]
                            sums[n] += channel_mean(d).double() * k
                            count[n] += k
                        handles.append(_on_quantized_input(m, observe))
                    try:
                        for xb in data_batches:
                            qmodel(xb)
                            task.advance(sweep=f"{p + 1}/{max(1, passes)}", layers=len(layers))
                    finally:
                        for h in handles:
                            h.remove()
                    for n, m in layers:
                        delta = sums[n] / max(count[n], 1)
                        _set_bias(m, ref_bias[n] - delta)
                        out[n] = float(delta.abs().max())
        elif mode == "network":
            if fmodel is None:
                raise MixqError("bias correction: mode='network' needs the float model")
            out = _network_correction(qmodel, fmodel, data, batch_size)
        else:
            raise MixqError(f"bias correction: mode {mode!r} is not one of layer, network")
    return out


@torch.no_grad()
def _output_means(model: nn.Module, names: list[str], data: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Per-channel mean output of every named layer over ``data`` (one forward pass)."""
    sums: dict[str, torch.Tensor] = {}
    count = {n: 0 for n in names}
    handles = []
    for n in names:
        def hook(_m: nn.Module, _i: object, y: torch.Tensor, n: str = n) -> None:
            k = y.shape[0]
            sums[n] = sums.get(n, torch.zeros(())) + channel_mean(y).double() * k
            count[n] += k
        handles.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        for xb in batches(data, batch_size):
            model(xb)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / max(count[n], 1) for n in names if n in sums}


@torch.no_grad()
def _network_correction(qmodel: nn.Module, fmodel: nn.Module, data: torch.Tensor,
                        batch_size: int) -> dict[str, float]:
    """Layer after layer (each seeing the corrected layers before it): shift the bias so the
    quantized layer's mean output equals the float layer's mean output on the float model's input."""
    fmodel.eval()
    names = [n for n in layers_in_forward_order(qmodel, data)
             if isinstance(m := qmodel.get_submodule(n), QConv2d | QLinear) and m.formats]
    target = _output_means(fmodel, names, data, batch_size)
    out: dict[str, float] = {}

    def correct(n: str, layer: nn.Module, inputs: list[torch.Tensor]) -> None:
        assert isinstance(layer, QConv2d | QLinear)
        total = torch.zeros(layer.weight.shape[0], dtype=torch.float64)
        k = 0
        for xb in inputs:
            total += channel_mean(layer(xb)).double() * xb.shape[0]
            k += xb.shape[0]
        delta = total / max(k, 1) - target[n]
        _shift_bias(layer, delta)
        out[n] = float(delta.abs().max())

    visit_layers(qmodel, list(batches(data, batch_size)), names, correct, desc="ptq bias_correction")
    return out


# ---------------------------------------------------------------------------------------------- analytic
def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def clipped_normal_moments(mean: torch.Tensor, std: torch.Tensor,
                           upper: torch.Tensor | float | None = None) -> ChannelStats:
    """Mean and std of ``clamp(X, 0, upper)`` for ``X ~ N(mean, std²)`` (``upper=None``: ReLU).

    >>> m = clipped_normal_moments(torch.tensor([0.0]), torch.tensor([1.0]))
    >>> round(float(m.mean), 4)  # E[max(Z, 0)] = 1/sqrt(2π)
    0.3989
    """
    mu, sd = mean.double(), std.double().clamp(min=1e-12)
    a = (0.0 - mu) / sd
    pa, fa = torch.special.ndtr(a), _phi(a)
    if upper is None:
        pb, fb, bfb = torch.ones_like(mu), torch.zeros_like(mu), torch.zeros_like(mu)
        u = torch.zeros_like(mu)
    else:
        u = torch.as_tensor(upper, dtype=torch.float64).expand_as(mu)
        b = (u - mu) / sd
        pb, fb = torch.special.ndtr(b), _phi(b)
        bfb = b * fb
    p = pb - pa
    e1 = mu * p + sd * (fa - fb) + u * (1.0 - pb)
    e2 = (mu * mu * p + 2.0 * mu * sd * (fa - fb) + sd * sd * (p + a * fa - bfb) + u * u * (1.0 - pb))
    var = (e2 - e1 * e1).clamp(min=0.0)
    return ChannelStats(e1.float(), var.sqrt().float())


def expected_input_means(model: nn.Module, input_shape: tuple[int, ...], stats: dict[str, ChannelStats],
                         input_mean: float | torch.Tensor = 0.0, input_std: float = 1.0) -> dict[str, torch.Tensor]:
    """``E[x]`` of every compute layer's input (one value per input channel / feature), propagated
    through the captured graph from the per-layer output statistics ``stats`` (BN-folded layers)
    and the input's mean. Layers whose input cannot be derived (a layer without statistics on
    the path, max pooling, unknown ops) are left out."""
    specs = capture(model, input_shape)
    dist: dict[str, ChannelStats | None] = {}
    out: dict[str, torch.Tensor] = {}
    for s in specs:
        ins = [dist.get(i) for i in s.inputs]
        first = ins[0] if ins else None
        mod_name = s.extra.get("module")
        d: ChannelStats | None = None
        if s.kind == "input":
            c = s.out_shape[0]
            d = ChannelStats(torch.as_tensor(input_mean, dtype=torch.float32).expand(c).clone(),
                             torch.full((c,), float(input_std)))
        elif s.kind in ("conv", "dwconv", "linear"):
            if first is not None and mod_name:
                out[mod_name] = first.mean
            d = stats.get(mod_name) if mod_name else None
        elif first is None:
            d = None
        elif s.kind == "relu":
            d = clipped_normal_moments(first.mean, first.std)
        elif s.kind == "relu6":
            d = clipped_normal_moments(first.mean, first.std, 6.0)
        elif s.kind == "act" and mod_name and isinstance(act := model.get_submodule(mod_name), ClippedReLU):
            d = clipped_normal_moments(first.mean, first.std, act.upper)
        elif s.kind in ("avgpool", "gap"):
            d = first
        elif s.kind == "flatten":
            reps = int(math.prod(s.in_shape[1:])) if len(s.in_shape) == 3 else 1
            d = ChannelStats(first.mean.repeat_interleave(reps), first.std.repeat_interleave(reps))
        elif s.kind == "add" and all(i is not None for i in ins):
            known = [i for i in ins if i is not None]
            d = ChannelStats(torch.stack([i.mean for i in known]).sum(0),
                             torch.stack([i.std**2 for i in known]).sum(0).sqrt())
        elif s.kind == "concat" and all(i is not None for i in ins):
            d = ChannelStats(torch.cat([i.mean for i in ins if i is not None]),
                             torch.cat([i.std for i in ins if i is not None]))
        elif s.kind == "bn" and mod_name and isinstance(bn := model.get_submodule(mod_name), _BatchNorm):
            n = bn.num_features
            g = bn.weight.detach() if bn.weight is not None else torch.ones(n)
            b = bn.bias.detach() if bn.bias is not None else torch.zeros(n)
            d = ChannelStats(b.float(), g.abs().float())
        dist[s.name] = d
    return out


@torch.no_grad()
def analytic_bias_correction(qmodel: nn.Module, input_means: dict[str, torch.Tensor],
                             fmodel: nn.Module | None = None) -> dict[str, float]:
    """Data-free bias correction: ``bias -= ε E[x]`` with ``E[x]`` from :func:`expected_input_means`
    (zero padding is ignored). Layers without an input mean are left alone. Returns per corrected
    layer the largest absolute correction."""
    out: dict[str, float] = {}
    layers = dict(quant_layers(qmodel))
    for n in each_layer("ptq bias_correction", list(layers)):
        m = layers[n]
        if n not in input_means:
            continue
        eps = (m.quantized_weight().detach() - _float_weight(fmodel, n, m)).double()
        groups = int(m.groups) if isinstance(m, nn.Conv2d) else 1
        mean = input_means[n].double()
        if mean.numel() != (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features):
            continue
        delta = column_sums(eps, mean, groups, 1)
        _shift_bias(m, delta)
        out[n] = float(delta.abs().max())
    return out
