"""Run a model node by node over all calibration batches at once, so layer-wise algorithms (AdaRound,
sequential bias correction, statistics restoring) see each layer's input in the partially
processed model after a single forward pass instead of one forward per layer.

The model is traced with torch.fx (Conv2d/Linear and their quantized subclasses, and every
childless module, are leaves). Nodes run in graph order over every batch; only the outputs a
later node still needs are kept. Before a chosen layer runs, ``visit(name, layer, inputs)`` gets
its input batches and may change the layer (its new weights then produce the output the rest
of the graph sees). Models FX cannot trace make :func:`stream_layers` return False; callers
fall back to one (early-stopped) forward per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

Visit = Callable[[str, nn.Module, list[torch.Tensor]], None]


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.Conv2d | nn.Linear) or next(m.children(), None) is None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule | None:
    """An FX graph of ``model`` sharing its modules, or None when FX cannot trace it."""
    try:
        return fx.GraphModule(model, _LeafTracer().trace(model))
    except Exception:  # FX raises many exception types
        return None


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@torch.no_grad()
def stream_layers(model: nn.Module, data: Sequence[torch.Tensor], names: Sequence[str], visit: Visit) -> bool:
    """Run ``model`` over the batches ``data`` node by node, calling ``visit`` before each layer in
    ``names`` runs (in graph order). Returns False (and runs nothing) when FX cannot trace the model
    or a named layer is not a single module call of the graph."""
    gm = trace(model)
    if gm is None:
        return False
    nodes = list(gm.graph.nodes)
    calls: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    if any(calls.get(name, 0) != 1 for name in names):
        return False
    wanted = set(names)
    last_use: dict[fx.Node, int] = {}
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            last_use[a] = i
    env: dict[fx.Node, list[Any]] = {}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return False
    for i, n in enumerate(nodes):
        if n.op == "placeholder":
            env[n] = list(data)
        elif n.op == "output":
            break
        elif n.op == "get_attr":
            v = _fetch(model, str(n.target))
            env[n] = [v] * len(data)
        else:
            if n.op == "call_module" and str(n.target) in wanted:
                mod = model.get_submodule(str(n.target))
                visit(str(n.target), mod, [env[n.args[0]][b] for b in range(len(data))])  # type: ignore[index]
            outs = []
            for b in range(len(data)):
                def value(a: fx.Node, b: int = b) -> Any:
                    return env[a][b]
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
                if n.op == "call_module":
                    outs.append(model.get_submodule(str(n.target))(*args, **kwargs))
                elif n.op == "call_function":
                    outs.append(n.target(*args, **kwargs))  # type: ignore[operator]
                else:  # call_method
                    outs.append(getattr(args[0], str(n.target))(*args[1:], **kwargs))
            env[n] = outs
        for a in n.all_input_nodes:
            if last_use.get(a) == i:
                env.pop(a, None)
    return True
