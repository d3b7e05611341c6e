"""The quantized model as an FX graph, each node classified into an engine op kind.

``QConv2d``, ``QLinear`` and ``QAct`` are leaves. Every node on the activation
path gets a *kind* from explicit tables (module type, function name, method
name); anything else is a :class:`~mixq.errors.ModelError` naming the layer and
its type. Node names follow :mod:`mixq.graph.capture`: a module call is named by
the module's qualified name (``name:1``, ``name:2`` for its later calls), a
function call by its FX node name (``add``, ``flatten``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mixq.errors import ModelError
from mixq.nn import QAct, QConv2d, QLinear

MODULE_KINDS: dict[type[nn.Module], str] = {
    QConv2d: "qconv", QLinear: "qlinear", QAct: "qact",
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
    nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool", nn.AdaptiveAvgPool2d: "adaptive_avgpool",
    nn.Flatten: "flatten",
    nn.Identity: "identity", nn.Dropout: "identity", nn.Dropout1d: "identity", nn.Dropout2d: "identity",
}
FUNCTION_KINDS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "relu6": "relu6", "hardtanh": "hardtanh",
    "max_pool2d": "maxpool", "_max_pool2d": "maxpool", "avg_pool2d": "avgpool",
    "adaptive_avg_pool2d": "adaptive_avgpool", "mean": "mean",
    "flatten": "flatten", "add": "add", "iadd": "add", "cat": "cat", "concat": "cat",
    "dropout": "identity", "dropout2d": "identity",
}
METHOD_KINDS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "flatten": "flatten", "add": "add", "add_": "add", "mean": "mean",
    "view": "reshape", "reshape": "reshape", "contiguous": "identity", "size": "size",
}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, QConv2d | QLinear | QAct):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class OpInfo:
    """A classified FX node: engine ``kind``, readable ``name`` and the ``type`` named in errors."""

    kind: str
    name: str
    type: str
    module: nn.Module | None


def trace(model: nn.Module, example: torch.Tensor | None) -> fx.GraphModule:
    """FX-trace ``model`` (quantized layers as leaves) and record every node's shape on ``example`` (if given)."""
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # FX raises many types on untraceable code
        raise ModelError(f"integer engine: cannot trace {type(model).__name__} with torch.fx ({exc})") from exc
    if example is None:
        return gm
    was = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    model.train(was)
    return gm


def classify(gm: fx.GraphModule) -> dict[fx.Node, OpInfo]:
    """Engine kind of every ``call_*`` node; :class:`ModelError` naming the first unsupported one."""
    calls: Counter[str] = Counter()
    out: dict[fx.Node, OpInfo] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            raise ModelError(f"layer {node.target!r} (tensor constant): not supported by the integer engine")
        if node.op == "call_module":
            target = str(node.target)
            mod = gm.get_submodule(target)
            k = calls[target]
            calls[target] += 1
            name = target if k == 0 else f"{target}:{k}"
            kind = MODULE_KINDS.get(type(mod))
            if kind is None:
                raise ModelError(f"layer {name!r} ({type(mod).__name__}): not supported by the integer engine"
                                 + _hint(mod))
            out[node] = OpInfo(kind, name, type(mod).__name__, mod)
        elif node.op == "call_function":
            fname = getattr(node.target, "__name__", str(node.target))
            kind = FUNCTION_KINDS.get(fname)
            if kind is None:
                raise ModelError(f"layer {node.name!r} (function {fname}): not supported by the integer engine")
            out[node] = OpInfo(kind, node.name, fname, None)
        elif node.op == "call_method":
            kind = METHOD_KINDS.get(str(node.target))
            if kind is None:
                raise ModelError(f"layer {node.name!r} (method Tensor.{node.target}): "
                                 "not supported by the integer engine")
            out[node] = OpInfo(kind, node.name, f"Tensor.{node.target}", None)
    return out


def _hint(mod: nn.Module) -> str:
    if isinstance(mod, nn.Conv2d | nn.Linear):
        return " (a compute layer left in float: the plan must quantize its weights and input)"
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return " (fold BatchNorm into the preceding layer first: mixq.graph.fold_bn)"
    return ""


def shape_of(node: fx.Node) -> tuple[int, ...]:
    """Per-sample shape (batch dimension dropped) recorded by shape propagation."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ModelError(f"layer {node.name!r}: no tensor shape recorded (not a tensor op?)")
    return tuple(int(d) for d in meta.shape[1:])


def fn_args(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments of a call node by parameter name (``names`` in order)."""
    out = dict(defaults)
    for n, a in zip(names, node.args, strict=False):
        out[n] = a
    out.update(node.kwargs)
    return out


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The node's tensor operands (FX nodes among its positional args, flattening lists)."""
    found: list[fx.Node] = []
    for a in node.args:
        if isinstance(a, fx.Node):
            found.append(a)
        elif isinstance(a, list | tuple):
            found.extend(x for x in a if isinstance(x, fx.Node))
    return found

