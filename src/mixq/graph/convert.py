"""Turn a float model into its fake-quantized version under a `QuantPlan`.

The input model is never mutated: conversion works on a deep copy, swapping
each planned Conv2d/Linear for a `QConv2d`/`QLinear`. Which modules count as
Conv2d/Linear, and what happens to the other compute modules, is decided by the
one table in :mod:`mixq.graph.registry`. When the plan quantizes activations, every
lookup-table activation module (Hardswish, Hardsigmoid, SiLU, Sigmoid, Tanh, GELU, ELU,
LeakyReLU, Mish: :data:`mixq.nn.LUT_FUNCTIONS`) is wrapped in a :class:`~mixq.nn.QLutAct`
(its input quantizer has the plan's activation bit width); the quantized model lists the
wrapped modules in its attribute ``mixq_lut_activations``. A plan with ``residual_bits`` also puts a quantizer on
every residual stream (:mod:`mixq.graph.residual`; the copy is then an FX ``GraphModule``).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

from mixq.errors import ModelError, PlanError
from mixq.graph.registry import coverage, plain_layer
from mixq.graph.residual import quantize_residuals
from mixq.modes import eval_mode
from mixq.nn import QAct, QLutAct, is_lut_activation, quantized_layer
from mixq.nn.modules import observe
from mixq.plan import QuantPlan

LUT_ATTR = "mixq_lut_activations"


def compute_layer_names(model: nn.Module) -> dict[str, int]:
    """Quantizable Conv2d and Linear layers of ``model`` (registration order) with their weight rows:
    the exact types and the subclasses that compute the same (:mod:`mixq.graph.registry`; a subclass
    with its own forward needs sample data and is left out here)."""
    return coverage(model).layers


def to_quantized(model: nn.Module, plan: QuantPlan, *, sample: torch.Tensor | None = None,
                 allow_float: bool | Iterable[str] = False) -> nn.Module:
    """A copy of ``model`` with every layer named in ``plan`` replaced by its quantized version.

    Raises `PlanError` naming a planned layer the model does not have, and
    `ModelError` naming a planned layer whose type cannot be quantized, or a compute layer that
    would stay in float (:mod:`mixq.graph.registry`) unless ``allow_float`` (``True`` or names)
    or the plan's ``meta["float_layers"]`` accepts it. ``sample`` (a batch of inputs) lets
    Conv2d/Linear subclasses with their own forward be checked against a plain layer and finds
    functional conv/linear calls on parameters.
    """
    meta_floats = plan.meta.get("float_layers") or {}
    allowed = allow_float if isinstance(allow_float, bool) else list(allow_float)
    if allowed is not True:
        allowed = [*(allowed or []), *meta_floats]
    cov = coverage(model, sample, plan.meta.get("converted_layers"))
    cov.accept("quantize", allowed)
    modules = dict(model.named_modules())
    for name in plan:
        if name not in modules:
            raise PlanError(f"layers.{name}: the model has no layer of that name")
        if name not in cov.layers:
            why = f": {cov.floats[name][1]}" if name in cov.floats else ""
            raise ModelError(f"quantize: layer {name!r} ({type(modules[name]).__name__}): only Conv2d and Linear "
                             f"layers can be quantized{why}")
    plan.check_layers(cov.layers)
    out = copy.deepcopy(model)
    for name, lp in plan.items():
        if lp.weight is None and lp.act is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        layer = getattr(parent, leaf)
        if name in cov.convert:  # a subclass computing a plain Conv2d / Linear
            layer = plain_layer(layer, cov.convert[name])
        setattr(parent, leaf, quantized_layer(layer, lp))
    lut = lut_settings(plan)
    names = wrap_lut_activations(out, *lut) if lut is not None else []
    if plan.residual_bits is not None:
        out = quantize_residuals(out, plan.residual_bits, lut[1] if lut is not None else "minmax")
    setattr(out, LUT_ATTR, tuple(names))
    return out


def lut_settings(plan: QuantPlan) -> tuple[int, str] | None:
    """(bits, observer) of the lookup-table activations' input quantizers: the plan's most common
    activation bit width (the wider on a tie; within 2..16) and observer; ``None`` when no activation is quantized."""
    acts = [lp for _, lp in plan.items() if lp.act is not None]
    if not acts:
        return None
    bits = Counter(int(lp.act.storage_bits) for lp in acts if lp.act is not None)
    observers = Counter(lp.act_observer for lp in acts)
    top = max(bits.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return min(max(top, 2), 16), observers.most_common(1)[0][0]  # a signed table of at most 2**16 entries


def wrap_lut_activations(model: nn.Module, bits: int, observer: str) -> list[str]:
    """Wrap every lookup-table activation module of ``model`` in a :class:`QLutAct`, in place; their names."""
    names = [n for n, m in model.named_modules() if n and is_lut_activation(m)]
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, QLutAct(getattr(parent, leaf), bits, observer))
    return names


def act_quantizers(model: nn.Module) -> list[QAct]:
    return [m for m in model.modules() if isinstance(m, QAct)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Calibrate the activation quantizers of a converted model in place on float batches."""
    with eval_mode(model):
        observe(model, act_quantizers(model), batches, "calibration needs at least one batch of data")
    return model
