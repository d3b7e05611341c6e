"""L3: the model as a graph — capture to `LayerSpec`, BatchNorm folding, module swap.

``capture(model, (C, H, W))`` gives the plain-data layer list every later
stage reads (shapes, kernel, stride, groups, MACs, params, producer/consumer
edges including residual adds and concats); ``coverage`` / ``COMPUTE_MODULES`` (``registry``) say which
modules are quantized, and which are refused or left in float; ``fold_bn`` and ``swap_modules``
return new models and never change their input.

The names below are imported on first access (PEP 562), so ``import mixq.graph.spec`` — the
plain data the hardware model reads — does not load torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as type checkers see them; at run time __getattr__ imports them
    from mixq.graph.bnfold import fold_bn, fold_into, foldable_pairs
    from mixq.graph.capture import capture, summary_table
    from mixq.graph.registry import COMPUTE_MODULES, Coverage, classify, coverage
    from mixq.graph.spec import COMPUTE_KINDS, LAYER_KINDS, LayerSpec, compute_layers, total_macs
    from mixq.graph.swap import is_leaf, leaf_modules, named_compute_layers, set_submodule, swap_modules

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "fold_bn": "bnfold", "fold_into": "bnfold", "foldable_pairs": "bnfold",
    "capture": "capture", "summary_table": "capture",
    "COMPUTE_MODULES": "registry", "Coverage": "registry", "classify": "registry", "coverage": "registry",
    "COMPUTE_KINDS": "spec", "LAYER_KINDS": "spec", "LayerSpec": "spec", "compute_layers": "spec",
    "total_macs": "spec",
    "is_leaf": "swap", "leaf_modules": "swap", "named_compute_layers": "swap", "set_submodule": "swap",
    "swap_modules": "swap",
}

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


def __getattr__(name: str) -> Any:
    """Import a public name on first access and keep it in the package."""
    sub = _LAZY.get(name)
    if sub is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{sub}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package object: the import system binds a loaded submodule as an attribute of its package;
    where a public function has the submodule's name (``capture``), the function keeps the name, as it
    did when this package imported its names eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
