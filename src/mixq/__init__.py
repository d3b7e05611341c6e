"""mixq: FPGA-centric hardware/software co-design of quantized CNNs.

The package root re-exports the main API. ``import mixq`` stays light: it does
not import torch; each name below is imported on first use (PEP 562), so the
command line answers ``--help`` and ``--version`` at once.

* :func:`default_plan`, :func:`quantize`, :func:`evaluate` — from :mod:`mixq.api`
* :func:`verify` — the integer engine against fake quant (:func:`mixq.engine.verify.verify`)
* :func:`estimate` — resources and frames/s on an FPGA part (:func:`mixq.hw.estimate.estimate`)
* :class:`QuantPlan`, :func:`load_plan`, :func:`save_plan` — the plan (:mod:`mixq.plan`)
* :func:`parse_format` — a number format from its short name (:mod:`mixq.formats`)
* :func:`capture` — a model's layer list (:func:`mixq.graph.capture.capture`)
* :class:`MixqError` — the base of every error mixq raises

Subpackages (``mixq.zoo``, ``mixq.data``, ``mixq.formats``, ...) are imported
on first attribute access too.

>>> import mixq
>>> mixq.__version__
'0.1.0'
>>> mixq.parse_format("fixed4n")
FixedPoint(bits=4, signed=True, narrow=True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mixq._version import __version__
from mixq.errors import MixqError

if TYPE_CHECKING:  # the names as type checkers see them; at run time __getattr__ imports them
    from mixq.api import default_plan, evaluate, quantize
    from mixq.engine.verify import verify
    from mixq.formats import parse_format
    from mixq.graph.capture import capture
    from mixq.hw.estimate import estimate
    from mixq.plan import QuantPlan, load_plan, save_plan

# public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "default_plan": "mixq.api",
    "quantize": "mixq.api",
    "evaluate": "mixq.api",
    "verify": "mixq.engine.verify",
    "estimate": "mixq.hw.estimate",
    "QuantPlan": "mixq.plan",
    "load_plan": "mixq.plan",
    "save_plan": "mixq.plan",
    "parse_format": "mixq.formats",
    "capture": "mixq.graph.capture",
}

# subpackages reachable as attributes of ``mixq`` without an explicit import
_SUBMODULES = frozenset({
    "algorithms", "api", "cli", "data", "engine", "errors", "export", "formats", "graph", "hw", "io", "nn",
    "plan", "progress", "quant", "report", "rtl", "run", "validate", "zoo",
})

__all__ = [
    "MixqError",
    "QuantPlan",
    "__version__",
    "capture",
    "default_plan",
    "estimate",
    "evaluate",
    "load_plan",
    "parse_format",
    "quantize",
    "save_plan",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import a public name (or a subpackage) on first access and keep it in the module."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    dunders = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    return sorted(dunders | set(__all__) | _SUBMODULES)
