"""Run a model node by node over all calibration batches at once, so layer-wise algorithms (AdaRound,
sequential bias correction, statistics restoring) see each layer's input in the partially
processed model after a single forward pass instead of one forward per layer.

The model is traced by the one graph front end (:func:`mixq.graph.trace.trace`: compute layers
and their quantized subclasses are leaves). Nodes run in graph order over every batch; only the outputs a
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

from mixq import progress
from mixq.algorithms.ptq._common import inputs_at
from mixq.errors import ModelError
from mixq.graph.trace import trace

Visit = Callable[[str, nn.Module, list[torch.Tensor]], None]
TwinVisit = Callable[[str, list[nn.Module], list[list[torch.Tensor]]], None]


def _trace(model: nn.Module) -> fx.GraphModule | None:
    """The front end's graph of ``model`` (sharing its modules), or None when it cannot be traced."""
    try:
        return trace(model, stage="ptq")
    except ModelError:
        return None


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Run:
    """One traced model's node-by-node run over a list of batches (values kept until their last use)."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, data: Sequence[torch.Tensor]) -> None:
        self.model, self.nodes, self.data = model, list(gm.graph.nodes), data
        self.last_use: dict[fx.Node, int] = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                self.last_use[a] = i
        self.env: dict[fx.Node, list[Any]] = {}

    def inputs(self, i: int) -> list[torch.Tensor]:
        """The first argument of node ``i`` for every batch (a layer's input)."""
        return [self.env[self.nodes[i].args[0]][b] for b in range(len(self.data))]  # type: ignore[index]

    def step(self, i: int) -> None:
        n = self.nodes[i]
        if n.op == "placeholder":
            self.env[n] = list(self.data)
        elif n.op == "get_attr":
            self.env[n] = [_fetch(self.model, str(n.target))] * len(self.data)
        elif n.op != "output":
            outs = []
            for b in range(len(self.data)):
                def value(a: fx.Node, b: int = b) -> Any:
                    return self.env[a][b]
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
                if n.op == "call_module":
                    outs.append(self.model.get_submodule(str(n.target))(*args, **kwargs))
                elif n.op == "call_function":
                    outs.append(n.target(*args, **kwargs))  # type: ignore[operator]
                else:  # call_method
                    outs.append(getattr(args[0], str(n.target))(*args[1:], **kwargs))
            self.env[n] = outs
        for a in n.all_input_nodes:
            if self.last_use.get(a) == i:
                self.env.pop(a, None)


def _signature(gm: fx.GraphModule) -> list[tuple[str, str]]:
    return [(n.op, str(n.target)) for n in gm.graph.nodes]


@torch.no_grad()
def stream_twins(models: Sequence[nn.Module], data: Sequence[torch.Tensor], names: Sequence[str],
                 visit: TwinVisit) -> bool:
    """Run ``models`` — twins with the same graph, e.g. a quantized model and the float model it was
    converted from — over the batches ``data`` side by side, node by node. Before each layer in
    ``names`` runs, ``visit(name, layers, inputs)`` gets that layer of every model and each one's
    input batches. Returns False (and runs nothing) when FX cannot trace a model, the graphs
    differ, or a named layer is not a single module call."""
    gms = [_trace(m) for m in models]
    if any(gm is None for gm in gms):
        return False
    traced = [gm for gm in gms if gm is not None]
    sig = _signature(traced[0])
    if any(_signature(gm) != sig for gm in traced[1:]):
        return False
    calls: dict[str, int] = {}
    for op, target in sig:
        if op == "call_module":
            calls[target] = calls.get(target, 0) + 1
    if any(calls.get(name, 0) != 1 for name in names) or sum(op == "placeholder" for op, _ in sig) != 1:
        return False
    wanted = set(names)
    runs = [_Run(m, gm, data) for m, gm in zip(models, traced, strict=True)]
    for i, (op, target) in enumerate(sig):
        if op == "output":
            break
        if op == "call_module" and target in wanted:
            visit(target, [m.get_submodule(target) for m in models], [r.inputs(i) for r in runs])
        for r in runs:
            r.step(i)
    return True


def _single(visit: Visit) -> TwinVisit:
    """A one-model visit as a twin visit over ``[model]``."""
    def one(name: str, layers: list[nn.Module], inputs: list[list[torch.Tensor]]) -> None:
        visit(name, layers[0], inputs[0])
    return one


def stream_layers(model: nn.Module, data: Sequence[torch.Tensor], names: Sequence[str], visit: Visit) -> bool:
    """Run ``model`` over the batches ``data`` node by node, calling ``visit`` before each layer in
    ``names`` runs (in graph order). Returns False (and runs nothing) when FX cannot trace the model
    or a named layer is not a single module call of the graph."""
    return stream_twins([model], data, names, _single(visit))


def visit_layers(model: nn.Module, data: Sequence[torch.Tensor], names: Sequence[str], visit: Visit,
                 desc: str = "ptq layers") -> None:
    """:func:`stream_layers`, or for a model FX cannot trace one early-stopped forward per layer
    (``visit`` then gets the same input batches, computed with the layers before already visited).
    Reported as the progress task ``desc``, advancing per layer (see :func:`visit_twins`)."""
    visit_twins([model], data, names, _single(visit), desc)


def visit_twins(models: Sequence[nn.Module], data: Sequence[torch.Tensor], names: Sequence[str],
                visit: TwinVisit, desc: str = "ptq layers") -> None:
    """:func:`stream_twins`, or one early-stopped forward per layer and model where it cannot run.

    The visits are reported as the :func:`mixq.progress.task` ``desc`` (total: the layers),
    advancing after each layer with its name."""
    with progress.task(desc, total=len(names)) as t:
        def reported(name: str, layers: list[nn.Module], inputs: list[list[torch.Tensor]]) -> None:
            visit(name, layers, inputs)
            t.advance(layer=name)

        if stream_twins(models, data, names, reported):
            return
        for name in names:
            layers = [m.get_submodule(name) for m in models]
            reported(name, layers, [[inputs_at(m, lay, xb) for xb in data]
                                    for m, lay in zip(models, layers, strict=True)])
