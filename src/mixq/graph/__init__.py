"""L3: the model as a graph — capture to `LayerSpec`, BatchNorm folding, module swap.

``capture(model, (C, H, W))`` gives the plain-data layer list every later
stage reads (shapes, kernel, stride, groups, MACs, params, producer/consumer
edges including residual adds and concats); ``fold_bn`` and ``swap_modules``
return new models and never change their input.
"""

from __future__ import annotations

from mixq.graph.bnfold import fold_bn, fold_into, foldable_pairs
from mixq.graph.capture import capture, is_leaf, summary_table
from mixq.graph.spec import COMPUTE_KINDS, LAYER_KINDS, LayerSpec, compute_layers, total_macs
from mixq.graph.swap import leaf_modules, named_compute_layers, set_submodule, swap_modules

__all__ = [
    "COMPUTE_KINDS",
    "LAYER_KINDS",
    "LayerSpec",
    "capture",
    "compute_layers",
    "fold_bn",
    "fold_into",
    "foldable_pairs",
    "is_leaf",
    "leaf_modules",
    "named_compute_layers",
    "set_submodule",
    "summary_table",
    "swap_modules",
    "total_macs",
]
