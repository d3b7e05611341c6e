"""Tracing a forward that reads its tensors' shapes: the front end's fallback where plain FX tracing fails.

Plain FX tracing (:func:`mixq.graph.trace.trace`) sees a shape as a graph value, so a forward that unpacks it
(``b, c, h, w = x.shape``), takes its length (``len(x.shape)``) or branches on it (``if a.shape[-1] !=
b.shape[-1]: pad``) cannot be traced. :func:`trace_concrete` traces such a forward while running it at the same
time on an example input at two batch sizes (1 and 2, inference semantics, no gradient): every proxy knows its
value at both, and a shape, a size, a rank or a length is handed back to the forward as a plain number wherever it
is the same at both batch sizes. Where it is not (the batch dimension, or anything made from it), it stays a graph
value, so the graph runs at any batch size. What the forward then does with those numbers (reshapes, pads,
interpolation sizes, its branches) is fixed for the example's per-sample shape: the graph is the model at that
input shape, the one every mixq stage works at. A branch on a tensor's *values* still cannot be traced.

Used by :func:`mixq.graph.normalize.normalize` (with the input shape it is given), which then checks the graph
against the model's own forward at a third batch size.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from mixq.errors import ModelError
from mixq.graph.trace import Tracer, inference_mode, live_nodes

BATCHES = (1, 2)  # the example's batch sizes: a size that differs between them depends on the batch


class _NoValue(Exception):
    """A proxy without a concrete value (an op that did not run on the example)."""


class ConcreteTracer(Tracer):
    """The front end's tracer, with each proxy's value on ``examples`` (one input per batch size)."""

    def __init__(self, examples: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.examples = examples
        self.values: dict[fx.Node, tuple[Any, ...]] = {}
        self._inputs = 0
        self._running = 0  # > 0 while an op runs on the example: its module calls are not traced

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._running:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Valued(node, self)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any | None = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        p = fx.Tracer.create_proxy(self, kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        try:
            if kind == "placeholder":
                self._inputs += 1
                if self._inputs == 1:
                    vals: tuple[Any, ...] = self.examples
                elif args:  # a later argument with a default
                    vals = (args[0],) * len(self.examples)
                else:
                    raise _NoValue
            else:
                self._running += 1
                try:
                    vals = tuple(self._run(kind, target, args, kwargs, i) for i in range(len(self.examples)))
                finally:
                    self._running -= 1
        except Exception:  # noqa: BLE001 - an op that does not run on the example stays symbolic only
            return p
        self.values[p.node] = vals
        return p

    def _value(self, v: Any, i: int) -> Any:
        if isinstance(v, fx.Proxy):
            vals = self.values.get(v.node)
            if vals is None:
                raise _NoValue
            return vals[i]
        return v

    def _run(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], i: int) -> Any:
        a = fx.node.map_aggregate(args, lambda v: self._value(v, i))
        kw = fx.node.map_aggregate(kwargs, lambda v: self._value(v, i))
        assert isinstance(a, tuple) and isinstance(kw, dict)
        if kind == "get_attr":
            obj: Any = self.root
            for part in str(target).split("."):
                obj = getattr(obj, part)
            return obj
        if kind == "call_module":
            return self.root.get_submodule(str(target))(*a, **kw)
        if kind == "call_function":
            return target(*a, **kw)
        if kind == "call_method":
            return getattr(a[0], str(target))(*a[1:], **kw)
        raise _NoValue


class _Valued(fx.Proxy):
    """A proxy that answers its shape, rank and length from its values where they do not depend on the batch."""

    tracer: ConcreteTracer

    def _values(self) -> tuple[Any, ...] | None:
        return self.tracer.values.get(self.node)

    def _tensors(self) -> tuple[torch.Tensor, ...] | None:
        v = self._values()
        return v if v is not None and all(isinstance(t, torch.Tensor) for t in v) else None  # type: ignore[return-value]

    def size(self, dim: int | None = None) -> Any:
        t = self._tensors()
        if t is None:
            return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})
        if dim is not None:
            sizes = {int(x.shape[dim]) for x in t}
            return sizes.pop() if len(sizes) == 1 else self.tracer.create_proxy("call_method", "size", (self, dim), {})
        dims = [self.size(d) for d in range(t[0].dim())]
        return torch.Size(dims) if all(isinstance(d, int) for d in dims) else tuple(dims)

    @property
    def shape(self) -> Any:  # type: ignore[override]
        return self.size()

    def dim(self) -> Any:
        t = self._tensors()
        return t[0].dim() if t is not None else self.tracer.create_proxy("call_method", "dim", (self,), {})

    @property
    def ndim(self) -> Any:  # type: ignore[override]
        return self.dim()

    def numel(self) -> Any:
        t = self._tensors()
        n = {int(x.numel()) for x in t} if t is not None else set()
        return n.pop() if len(n) == 1 else self.tracer.create_proxy("call_method", "numel", (self,), {})

    @property
    def dtype(self) -> Any:  # type: ignore[override]
        t = self._tensors()
        return t[0].dtype if t is not None else self.tracer.create_proxy("call_function", getattr, (self, "dtype"), {})

    def _number(self) -> Any:
        """The value where it is a Python number (a size, or arithmetic on sizes), not a tensor's: the one at
        batch size 1 where it depends on the batch (checked afterwards at a third batch size)."""
        v = self._values()
        if v is None or not all(isinstance(x, (bool, int, float)) for x in v):
            return None
        return v[0]

    def __bool__(self) -> bool:
        n = self._number()
        return fx.Proxy.__bool__(self) if n is None else bool(n)

    def _known(self, what: str, kinds: tuple[type, ...] = (bool, int, float)) -> Any:
        n = self._number()
        if not isinstance(n, kinds):
            raise TypeError(f"{what} of a traced value that is not a known number ({self.node.name})")
        return n

    def __int__(self) -> int:
        return int(self._known("int()"))

    def __index__(self) -> int:
        return int(self._known("an index", (int,)))

    def __float__(self) -> float:
        return float(self._known("float()"))

    def __len__(self) -> int:
        v = self._values()
        lens = {len(x) for x in v} if v is not None and all(hasattr(x, "__len__") for x in v) else set()
        if len(lens) != 1:
            return fx.Proxy.__len__(self)
        return lens.pop()

    def __iter__(self) -> Iterator[Any]:
        v = self._values()
        if v is not None and all(isinstance(x, (tuple, list)) for x in v) and len({len(x) for x in v}) == 1:
            return iter([self[k] for k in range(len(v[0]))])  # type: ignore[index]
        return fx.Proxy.__iter__(self)


def trace_concrete(model: nn.Module, input_shape: tuple[int, ...], *, stage: str = "normalize") -> fx.GraphModule:
    """``model`` traced by :class:`ConcreteTracer` on a random input of ``input_shape`` (per sample), sharing its
    modules; the model is not changed. A forward that still cannot be traced is one :class:`ModelError`."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(max(BATCHES), *input_shape, generator=gen)
    tracer = ConcreteTracer(tuple(x[:b].clone() for b in BATCHES))
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    fixed = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}  # its defaults
    try:
        with inference_mode(model):
            graph = tracer.trace(model, concrete_args=fixed or None)
    except Exception as exc:  # FX raises many types (TraceError, TypeError, NotImplementedError ...)
        raise ModelError(f"{stage}: torch.fx cannot trace {type(model).__name__} ({str(exc).splitlines()[0]}); "
                         "export it with torch.onnx.export and pass the .onnx file instead") from exc
    _drop_fixed_arguments(graph)
    _guard_input(graph, type(model).__name__, tuple(int(s) for s in input_shape))
    graph._tracer_cls = Tracer  # a copy or a pickle of the graph module re-traces its code with the plain tracer
    return fx.GraphModule(model, graph)


def input_guard(x: torch.Tensor, shape: tuple[int, ...], model: str) -> torch.Tensor:
    """``x``, where its per-sample shape is the one the graph was traced at (its sizes are numbers in it); another
    shape is one :class:`ModelError`, not a silently wrong result. An identity to every stage (op table)."""
    if isinstance(x, torch.Tensor) and tuple(x.shape[1:]) != tuple(shape):
        raise ModelError(f"{model} was traced at input {tuple(shape)} (its forward reads its shapes) and runs on "
                         f"that shape only, got {tuple(x.shape[1:])}")
    return x


def _guard_input(graph: fx.Graph, model: str, shape: tuple[int, ...]) -> None:
    """Every use of the graph's input reads it through :func:`input_guard`."""
    ph = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(ph):
        guard = graph.call_function(input_guard, (ph, shape, model))
    ph.replace_all_uses_with(guard, delete_user_cb=lambda user: user is not guard)


def _drop_fixed_arguments(graph: fx.Graph) -> None:
    """The graph takes the one input: a later argument traced at its default is a placeholder FX only checks
    (``torch._assert(arg == default)``); it and its check go where the output does not depend on them."""
    later = [n for n in graph.nodes if n.op == "placeholder"][1:]
    if not later:
        return
    needed = live_nodes(graph)
    drop: set[fx.Node] = set(later)
    for n in graph.nodes:
        if any(a in drop for a in n.all_input_nodes):
            drop.add(n)
    if drop & needed:
        return  # the output reads an argument: left as traced
    for n in reversed(list(graph.nodes)):
        if n in drop:
            graph.erase_node(n)
