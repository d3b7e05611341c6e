"""Turn a float model into its fake-quantized version under a `QuantPlan`.

The input model is never mutated: conversion works on a deep copy, swapping
each planned Conv2d/Linear for a `QConv2d`/`QLinear`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from mixq.errors import ModelError, PlanError
from mixq.nn import QAct, quantized_layer
from mixq.plan import QuantPlan


def compute_layer_names(model: nn.Module) -> dict[str, int]:
    """Conv2d and Linear layers of ``model`` (registration order) with their weight rows."""
    return {n: int(m.weight.shape[0]) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}


def to_quantized(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """A copy of ``model`` with every layer named in ``plan`` replaced by its quantized version.

    Raises `PlanError` naming a planned layer the model does not have, and
    `ModelError` naming a planned layer whose type cannot be quantized.
    """
    modules = dict(model.named_modules())
    for name in plan:
        if name not in modules:
            raise PlanError(f"layers.{name}: the model has no layer of that name")
        mtype = type(modules[name])
        if mtype not in (nn.Conv2d, nn.Linear):
            raise ModelError(f"layer {name!r} ({mtype.__name__}): only Conv2d and Linear layers can be quantized")
    plan.check_layers(compute_layer_names(model))
    out = copy.deepcopy(model)
    for name, lp in plan.items():
        if lp.weight is None and lp.act is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, leaf, quantized_layer(getattr(parent, leaf), lp))
    return out


def act_quantizers(model: nn.Module) -> list[QAct]:
    return [m for m in model.modules() if isinstance(m, QAct)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Calibrate the activation quantizers of a converted model in place on float batches."""
    acts = act_quantizers(model)
    was_training = model.training
    model.eval()
    for a in acts:
        a.start_observing()
    n = 0
    for x in batches:
        model(x)
        n += 1
    if acts and n == 0:
        raise ModelError("calibration needs at least one batch of data")
    for a in acts:
        a.freeze()
    model.train(was_training)
    return model
