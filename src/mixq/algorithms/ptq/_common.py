"""Shared helpers of the PTQ algorithms: batching, forward order, stopping a forward at a layer,
and the grouped-matrix view of a conv/linear layer (what AdaRound and bias correction work on).

A Conv2d with ``groups = G`` is ``G`` independent matrix products: the weight
``(Cout, Cin/G, kh, kw)`` is viewed as ``(G, Cout/G, Cin/G·kh·kw)`` and the input
unfolded to columns ``(G, Cin/G·kh·kw, positions)``; a Linear is the case
``G = 1``, one column per input vector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mixq import progress
from mixq.errors import MixqError, ModelError
from mixq.graph import ops
from mixq.modes import eval_mode
from mixq.nn import QConv2d, QLinear

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def require_positive(config: object, prefix: str, counts: tuple[str, ...], reals: tuple[str, ...] = ()) -> None:
    """Raise :class:`MixqError` naming ``prefix.field`` for the first field of ``config`` that is not
    positive: ``counts`` must be at least 1 as integers, ``reals`` above 0 (a frozen config's
    ``__post_init__`` check)."""
    for f in counts + reals:
        v = getattr(config, f)
        if (int(v) < 1) if f in counts else not v > 0:
            raise MixqError(f"{prefix}.{f}: must be positive, got {v!r}")


def each_layer(desc: str, names: Sequence[str]) -> Iterator[str]:
    """``names`` one by one, reported as the :func:`mixq.progress.task` ``desc`` advancing after each
    layer with its name (the per-layer loops of the PTQ stages go through this or through
    :func:`mixq.algorithms.ptq._stream.visit_twins`)."""
    with progress.task(desc, total=len(names)) as t:
        for n in names:
            yield n
            t.advance(layer=n)


def batches(x: torch.Tensor | Sequence[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``x`` (a tensor split along dim 0, or already a sequence of batches)."""
    if isinstance(x, torch.Tensor):
        if batch_size < 1:
            raise MixqError(f"batch_size: must be positive, got {batch_size}")
        yield from ops.batches(x, batch_size)
    else:
        yield from x


@torch.no_grad()
def run_hooked(model: nn.Module, hooks: Mapping[str, Callable[..., None]], data: torch.Tensor,
               batch_size: int) -> None:
    """Run ``data`` through ``model`` in eval mode with forward hook ``hooks[name]`` on each named
    module; the hooks are removed and the training mode restored afterwards."""
    handles = [model.get_submodule(n).register_forward_hook(h) for n, h in hooks.items()]
    try:
        with eval_mode(model):
            for xb in batches(data, batch_size):
                model(xb)
    finally:
        for h in handles:
            h.remove()


def input_channel_ranges(model: nn.Module, names: Iterable[str], data: torch.Tensor,
                         batch_size: int) -> dict[str, torch.Tensor]:
    """Per-channel (dim 1) ``max |x|`` of the input of every named module over ``data`` (float64)."""
    ranges: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _o: object) -> None:
            x = inp[0].detach()
            r = x.abs().amax(dim=tuple(d for d in range(x.dim()) if d != 1)).double()
            ranges[name] = torch.maximum(ranges[name], r) if name in ranges else r
        return hook

    run_hooked(model, {n: hook_for(n) for n in names}, data, batch_size)
    return ranges


def as_tensor(data: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """Calibration data as one tensor (batches are concatenated)."""
    if isinstance(data, torch.Tensor):
        return data
    parts = list(data)
    if not parts:
        raise MixqError("calibration data: no batch given")
    return torch.cat(parts)


def is_quant_layer(m: nn.Module) -> bool:
    return isinstance(m, QConv2d | QLinear)


def layers_in_forward_order(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of the Conv2d/Linear (or quantized) layers in the order a forward calls them.

    Runs ``model`` once on ``sample[:1]``; a layer called twice is listed once.
    """
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES):
            def hook(_m: nn.Module, _inp: object, name: str = name) -> None:
                if name not in order:
                    order.append(name)
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
    return order


def weight_layers(model: nn.Module, sample: torch.Tensor, max_bits: int | None = None) -> list[str]:
    """The quantized layers with weight formats, in forward order; with ``max_bits`` those whose
    formats are all wider are left out (what AdaRound and GPTQ round)."""
    names = []
    for name in layers_in_forward_order(model, sample):
        m = model.get_submodule(name)
        if not isinstance(m, QConv2d | QLinear) or not m.formats:
            continue
        if max_bits is not None and max(f.storage_bits for f in m.formats) > max_bits:
            continue
        names.append(name)
    return names


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def inputs_at(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input tensor that ``layer`` (a submodule of ``model``) receives on ``x``; the forward
    stops there (the rest of the network is not run). For a quantized layer this is the
    activation *before* its input quantizer."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        got.append(inp[0].detach())
        raise _Stop

    h = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if not got:
        raise ModelError(f"{type(layer).__name__}: the layer was not called by the forward pass")
    return got[0]


def quantized_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` after the layer's input quantizer (unchanged for a float layer or float activations)."""
    iq = getattr(layer, "input_quant", None)
    if iq is None:
        return x
    with torch.no_grad():
        return iq(x)  # type: ignore[no-any-return]


def groups_of(layer: nn.Module) -> int:
    return int(layer.groups) if isinstance(layer, nn.Conv2d) else 1


def grouped_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``(Cout, Cin/G, ...)`` -> ``(G, Cout/G, Cin/G·kh·kw)``."""
    return w.reshape(groups, w.shape[0] // groups, -1)


def ungrouped_weight(wg: torch.Tensor, shape: torch.Size | Sequence[int]) -> torch.Tensor:
    return wg.reshape(tuple(shape))


def _padded(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` padded as the conv pads it before its unpadded convolution (explicit or ``"same"``
    padding, zeros, reflect, replicate or circular)."""
    pads = tuple(int(p) for p in layer._reversed_padding_repeated_twice)
    if layer.padding_mode == "zeros":
        return F.pad(x, pads)
    return F.pad(x, pads, mode=layer.padding_mode)


def columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as columns ``(G, Kg, positions)``; positions run over batch and output pixels
    (a conv's input padded its own way, :func:`_padded`)."""
    if isinstance(layer, nn.Conv2d):
        if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and not any(layer._reversed_padding_repeated_twice):
            cols = x.reshape(x.shape[0], x.shape[1], -1)  # a pointwise conv's columns are its pixels
        else:
            cols = F.unfold(_padded(layer, x), layer.kernel_size, dilation=layer.dilation,  # type: ignore[arg-type]
                            stride=layer.stride)  # type: ignore[arg-type]
        g = layer.groups
        b, k, l = cols.shape
        return cols.reshape(b, g, k // g, l).permute(1, 2, 0, 3).reshape(g, k // g, b * l)
    x2 = x.reshape(-1, x.shape[-1])
    return x2.t().unsqueeze(0)


def column_moments(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sums of :func:`columns` and of their squares over the positions, ``(G, Kg)`` float64 each, and
    the position count, without building the columns: each kernel tap of a conv sees a strided
    window of the padded input, summed in place (the im2col copy is ``kh·kw`` times the input)."""
    if not isinstance(layer, nn.Conv2d):
        x2 = x.reshape(-1, x.shape[-1]).double()
        return x2.sum(dim=0)[None], (x2 * x2).sum(dim=0)[None], int(x2.shape[0])
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    xp = _padded(layer, x).double()
    sq = xp * xp
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    s1 = x.new_zeros(x.shape[1], kh, kw, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            cols_ = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            s1[:, i, j] = xp[:, :, rows, cols_].sum(dim=(0, 2, 3))
            s2[:, i, j] = sq[:, :, rows, cols_].sum(dim=(0, 2, 3))
    g = layer.groups
    return s1.reshape(g, -1), s2.reshape(g, -1), int(x.shape[0]) * oh * ow


def outputs_to_columns(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A layer output ``(B, Cout, H, W)`` or ``(..., F)`` as ``(G, Cout/G, positions)`` (same order as
    :func:`columns`)."""
    g = groups_of(layer)
    if y.dim() == 4:
        b, c, h, w = y.shape
        return y.reshape(b, g, c // g, h * w).permute(1, 2, 0, 3).reshape(g, c // g, b * h * w)
    y2 = y.reshape(-1, y.shape[-1])
    return y2.t().reshape(g, y2.shape[1] // g, -1)


def channel_mean(y: torch.Tensor) -> torch.Tensor:
    """Mean of every channel (dim 1 of a feature map, the last dim of a vector batch)."""
    if y.dim() == 4:
        return y.mean(dim=(0, 2, 3))
    return y.reshape(-1, y.shape[-1]).mean(dim=0)


def channel_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel sum and sum of squares (float64) and the count, to accumulate over batches."""
    t = y.detach().double()
    t = t.transpose(0, 1).reshape(t.shape[1], -1) if t.dim() == 4 else t.reshape(-1, t.shape[-1]).t()
    return t.sum(dim=1), (t * t).sum(dim=1), int(t.shape[1])
