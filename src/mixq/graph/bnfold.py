"""Fold BatchNorm into the Conv2d / Linear layer it directly follows (inference semantics).

For a BN with running mean mu, variance var, eps, affine gamma, beta after a
layer y = W x + b, every output channel c gets

    s_c = gamma_c / sqrt(var_c + eps),   W'_c = s_c * W_c,   b'_c = s_c * (b_c - mu_c) + beta_c

so the layer alone computes what layer + BN computed in eval mode; the BN is
replaced by ``nn.Identity`` (module names, and so quantization plans, stay
valid). The arithmetic runs in float64 and is cast back to the weight dtype.

A pair is folded only when it is safe: the BN's one input is the layer's
output, that output feeds nothing else, each module is called exactly once,
the BN has running statistics and as many features as the layer has output
channels. Pairs are found in the graph of the one front end (:func:`mixq.graph.trace.trace`;
with ``input_shape`` the shapes are recorded too). A Linear followed by BatchNorm1d
is folded when its output is (N, F): checked when ``input_shape`` is given, assumed
otherwise (BatchNorm1d on a 3-D Linear output would normalise a different axis, so it
would fail the feature-count check in all but coincidental cases).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.graph.normalize import normalize
from mixq.graph.swap import set_submodule
from mixq.graph.trace import trace

_FOLDABLE = (nn.Conv2d, nn.Linear)


def _can_fold(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(layer, _FOLDABLE) or not isinstance(bn, _BatchNorm):
        return False
    if bn.running_mean is None or bn.running_var is None:
        return False
    cout = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    return bool(bn.num_features == cout)


def foldable_pairs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[tuple[str, str]]:
    """(layer name, BN name) of every BN that :func:`fold_bn` would fold, in forward order.

    A model the front end cannot trace is a :class:`ModelError`.
    """
    example = torch.rand(1, *input_shape) if input_shape is not None else None
    gm = trace(model, example, stage="fold_bn")
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or len(n.all_input_nodes) != 1:
            continue
        prev = n.all_input_nodes[0]
        if prev.op != "call_module" or len(prev.users) != 1 or n.args[0] is not prev:
            continue
        layer_name, bn_name = str(prev.target), str(n.target)
        if calls[layer_name] != 1 or calls[bn_name] != 1:
            continue
        layer = model.get_submodule(layer_name)
        shape = prev.meta.get("shape")
        if isinstance(layer, nn.Linear) and isinstance(shape, tuple) and len(shape) != 2:
            continue
        if _can_fold(layer, model.get_submodule(bn_name)):
            pairs.append((layer_name, bn_name))
    return pairs


@torch.no_grad()
def fold_into(layer: nn.Conv2d | nn.Linear, bn: _BatchNorm) -> None:
    """Fold ``bn``'s inference transform into ``layer``'s weight and bias, in place (adds a bias if none)."""
    assert bn.running_mean is not None and bn.running_var is not None
    w = layer.weight.detach().double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    layer.weight.copy_((w * scale.view(-1, *([1] * (w.dim() - 1)))).to(layer.weight.dtype))
    new_bias = ((b - mean) * scale + beta).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias, requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(new_bias)


def fold_bn(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A deep copy of ``model`` with every BN that directly follows a Conv2d/Linear folded into it.

    Folded BNs become ``nn.Identity``; BNs that cannot be folded safely are
    kept (see the module docstring). The copy keeps the input's train/eval
    mode; the input model is not changed. Conv1d / BatchNorm1d pairs are folded as the 2-D layers
    :func:`mixq.graph.normalize.normalize` writes them as. ``input_shape`` (without batch) records
    the shapes, so a BatchNorm1d is folded only where it normalises (N, F) features or a 1-D signal.
    """
    return split_bn(model, input_shape)[0]


def split_bn(model: nn.Module, input_shape: tuple[int, ...] | None = None,
             keep: Callable[[str, nn.Module], bool] | None = None) -> tuple[nn.Module, dict[str, nn.Module]]:
    """:func:`fold_bn`, except that the BN after each layer ``keep(name, layer)`` is true for is not folded but
    taken out (its place becomes ``nn.Identity`` too) and returned, by layer name, beside the copy."""
    model = normalize(model, input_shape)
    pairs = foldable_pairs(model, input_shape)
    out = copy.deepcopy(model)
    kept: dict[str, nn.Module] = {}
    for layer_name, bn_name in pairs:
        layer, bn = out.get_submodule(layer_name), out.get_submodule(bn_name)
        if keep is not None and keep(layer_name, layer):
            kept[layer_name] = bn
        else:
            fold_into(layer, bn)  # type: ignore[arg-type]
        set_submodule(out, bn_name, nn.Identity())
    return out, kept
