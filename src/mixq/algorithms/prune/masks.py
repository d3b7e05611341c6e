"""Pruning masks as pure functions of the weights: magnitude (unstructured) and channel (structured).

A mask is a 0/1 float tensor of the weight's shape, one per pruned layer,
keyed by the layer's qualified name (the `QuantPlan` key).

* :func:`magnitude_masks`: zero the ``sparsity`` fraction of smallest ``|w|``, per
  layer (``scope="layer"``) or under one threshold over all pruned layers
  (``scope="global"``).
* :func:`channel_masks`: zero whole output channels (weight rows), ranked by the
  row's L1 norm (``criterion="l1"``) or by ``|γ|`` of the BatchNorm that follows
  the layer (``"bn_gamma"``, network slimming). :func:`apply_masks` also zeroes
  that BatchNorm's ``γ`` and ``β`` for pruned channels, so they output exactly 0.

>>> w = torch.tensor([[0.1, -0.5], [2.0, -0.05]])
>>> magnitude_mask(w, 0.5).tolist()
[[0.0, 1.0], [1.0, 0.0]]
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.errors import MixqError
from mixq.graph.bnfold import foldable_pairs
from mixq.graph.convert import compute_layer_names

SCOPES = ("layer", "global")
CRITERIA = ("l1", "bn_gamma")


class PruneError(MixqError):
    """An invalid pruning request (names the layer or field)."""


def prunable_layers(model: nn.Module, skip_first_last: bool = True) -> list[str]:
    """Conv2d/Linear layers in registration order, without the first and last one by default."""
    names = list(compute_layer_names(model))
    return names[1:-1] if skip_first_last and len(names) > 2 else names


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not 0.0 <= float(sparsity) < 1.0:
        raise PruneError(f"prune.sparsity: must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``1 - sparsity`` fraction of ``w`` with the largest magnitude (ties: lower index kept)."""
    sparsity = _check_sparsity(sparsity)
    flat = w.detach().abs().flatten()
    n_prune = int(round(sparsity * flat.numel()))
    mask = torch.ones_like(flat)
    if n_prune:
        order = torch.sort(flat, stable=True).indices  # ascending; equal values keep index order
        mask[order[:n_prune]] = 0.0
    return mask.reshape(w.shape)


def _checked_layers(model: nn.Module, layers: Sequence[str] | None,
                    scope: str) -> dict[str, nn.Conv2d | nn.Linear]:
    """The layers to prune by name (default: :func:`prunable_layers`), checked: `PruneError` for an
    unknown ``scope`` or a name that is not a Conv2d/Linear layer of the model."""
    if scope not in SCOPES:
        raise PruneError(f"prune.scope: {scope!r} is not one of {', '.join(SCOPES)}")
    mods = dict(model.named_modules())
    out: dict[str, nn.Conv2d | nn.Linear] = {}
    for n in (list(layers) if layers is not None else prunable_layers(model)):
        m = mods.get(n)
        if not isinstance(m, nn.Conv2d | nn.Linear):
            raise PruneError(f"prune.layers: {n!r} is not a Conv2d/Linear layer of the model")
        out[n] = m
    return out


def magnitude_masks(model: nn.Module, sparsity: float, layers: Sequence[str] | None = None,
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """Unstructured magnitude masks for ``layers`` (default: :func:`prunable_layers`)."""
    sparsity = _check_sparsity(sparsity)
    weights = {n: m.weight.detach() for n, m in _checked_layers(model, layers, scope).items()}
    if scope == "layer":
        return {n: magnitude_mask(w, sparsity) for n, w in weights.items()}
    allw = torch.cat([w.abs().flatten() for w in weights.values()])
    n_prune = int(round(sparsity * allw.numel()))
    if n_prune == 0:
        return {n: torch.ones_like(w) for n, w in weights.items()}
    thr = torch.sort(allw, stable=True).values[n_prune - 1]
    return {n: (w.abs() > thr).to(w.dtype) for n, w in weights.items()}


def _bn_after(model: nn.Module) -> dict[str, str]:
    return dict(foldable_pairs(model))


def channel_scores(model: nn.Module, layers: Sequence[str], criterion: str = "l1") -> dict[str, torch.Tensor]:
    """Importance of every output channel: row L1 norm / row size, or ``|γ|`` of the following BN."""
    if criterion not in CRITERIA:
        raise PruneError(f"prune.criterion: {criterion!r} is not one of {', '.join(CRITERIA)}")
    mods = dict(model.named_modules())
    bn_of = _bn_after(model) if criterion == "bn_gamma" else {}
    out = {}
    for n in layers:
        w = mods[n].weight.detach()
        if criterion == "l1":
            out[n] = w.abs().reshape(w.shape[0], -1).mean(dim=1)
            continue
        bn = mods.get(bn_of.get(n, ""))
        if not isinstance(bn, _BatchNorm) or bn.weight is None:
            raise PruneError(f"prune.criterion: layer {n!r} is not followed by a BatchNorm with γ (use 'l1')")
        out[n] = bn.weight.detach().abs()
    return out


def channel_masks(model: nn.Module, ratio: float, layers: Sequence[str] | None = None,
                  criterion: str = "l1", scope: str = "layer") -> dict[str, torch.Tensor]:
    """Structured masks: the ``ratio`` fraction of least important output channels become zero rows.

    ``scope="global"`` ranks the channels of all layers together (meaningful for
    ``bn_gamma``, whose scale is comparable across layers); at least one channel
    of every layer is kept.
    """
    ratio = _check_sparsity(ratio)
    chosen = _checked_layers(model, layers, scope)
    scores = channel_scores(model, list(chosen), criterion)
    keep: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for n, s in scores.items():
            keep[n] = magnitude_mask(s, ratio).bool()
    else:
        alls = torch.cat(list(scores.values()))
        n_prune = int(round(ratio * alls.numel()))
        thr = torch.sort(alls, stable=True).values[n_prune - 1] if n_prune else alls.min() - 1
        for n, s in scores.items():
            k = s > thr
            if not bool(k.any()):
                k[int(s.argmax())] = True
            keep[n] = k
    out = {}
    for n, k in keep.items():
        w = chosen[n].weight
        out[n] = k.to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1)).expand_as(w).clone()
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with masked weights zeroed (and BN ``γ, β`` of fully pruned channels)."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    bn_of = _bn_after(out)
    for n, m in masks.items():
        layer = mods.get(n)
        if not isinstance(layer, nn.Conv2d | nn.Linear) or tuple(layer.weight.shape) != tuple(m.shape):
            raise PruneError(f"prune.masks: {n!r} is not a layer with weight shape {tuple(m.shape)}")
        layer.weight.mul_(m.to(layer.weight.dtype))
        dead = m.reshape(m.shape[0], -1).sum(dim=1) == 0
        if bool(dead.any()):
            if layer.bias is not None:
                layer.bias[dead] = 0.0
            bn = mods.get(bn_of.get(n, ""))
            if isinstance(bn, _BatchNorm) and bn.weight is not None and bn.bias is not None:
                bn.weight[dead] = 0.0
                bn.bias[dead] = 0.0
    return out


def param_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter-name masks for fine-tuning a float model: weights, and bias / BN of dead channels."""
    mods = dict(model.named_modules())
    bn_of = _bn_after(model)
    out: dict[str, torch.Tensor] = {}
    for n, m in masks.items():
        out[f"{n}.weight"] = m
        dead = m.reshape(m.shape[0], -1).sum(dim=1) == 0
        if not bool(dead.any()):
            continue
        keep = (~dead).to(m.dtype)
        layer = mods[n]
        if getattr(layer, "bias", None) is not None:
            out[f"{n}.bias"] = keep
        bn = mods.get(bn_of.get(n, ""))
        if isinstance(bn, _BatchNorm) and bn.weight is not None and bn.bias is not None:
            out[f"{bn_of[n]}.weight"] = keep
            out[f"{bn_of[n]}.bias"] = keep
    return out


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of zeros over all masks."""
    total = sum(int(m.numel()) for m in masks.values())
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    return zeros / max(1, total)
