"""L3: the model as a graph — capture to `LayerSpec`, BatchNorm folding, module swap.

``capture(model, (C, H, W))`` gives the plain-data layer list every later
stage reads (shapes, kernel, stride, groups, MACs, params, producer/consumer
edges including residual adds and concats); ``coverage`` / ``COMPUTE_MODULES`` (``registry``) say which
modules are quantized, and which are refused or left in float; ``fold_bn`` and ``swap_modules``
return new models and never change their input.
"""

from __future__ import annotations

from mixq.graph.bnfold import fold_bn, fold_into, foldable_pairs
from mixq.graph.capture import capture, summary_table
from mixq.graph.registry import COMPUTE_MODULES, Coverage, classify, coverage
from mixq.graph.spec import COMPUTE_KINDS, LAYER_KINDS, LayerSpec, compute_layers, total_macs
from mixq.graph.swap import is_leaf, leaf_modules, named_compute_layers, set_submodule, swap_modules

__all__ = [
    "COMPUTE_KINDS",
    "COMPUTE_MODULES",
    "Coverage",
    "LAYER_KINDS",
    "LayerSpec",
    "capture",
    "classify",
    "compute_layers",
    "coverage",
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
