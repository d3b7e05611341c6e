"""The one graph front end: one FX tracer and one op table for every stage.

Every stage that looks at a model's graph — capture (:mod:`mixq.graph.capture`), BatchNorm
folding, the node-by-node PTQ streams, the integer engine, the hardware-faithful fake quant and
the exports built from it — traces with :func:`trace` and names and classifies each node with
:func:`node_ops`. Nothing else in mixq subclasses ``torch.fx.Tracer`` or keeps a table of op kinds.

**Leaves.** A module is called whole (one ``call_module`` node) when it is a compute module of
:mod:`mixq.graph.registry` (Conv2d / Linear, their subclasses and quantized versions, and the
refused kinds), a module whose class (or a base class) is in :data:`MODULE_KINDS` (BatchNorm,
``QAct``, ``ZeroInsert``, CLE's clipped ReLU6 as a Hardtanh ...) or a module of ``torch.nn``
itself; user-defined modules are traced through to the torch ops they call.

**Names.** A module call is named by the module's qualified name (``layer1.0.conv1``); a module
called more than once gets ``name:1``, ``name:2`` ... for its later calls; a function or method
call is named by its FX node (``add``, ``cat_1``, ``flatten``).

**Kinds.** :data:`MODULE_KINDS` (looked up along the module's class hierarchy, so subclasses are
covered), :data:`FUNCTION_KINDS` and :data:`METHOD_KINDS` give each node a kind; :data:`KINDS`
says, for each kind, the :class:`~mixq.graph.spec.LayerSpec` kind it is captured as and the stages
that support it (:data:`STAGES`). A node of no listed kind is ``unsupported``: capture records it as
``other`` and names it in :func:`support`; the integer engine refuses it by name.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.errors import ModelError
from mixq.graph.registry import COMPUTE_TYPES, bind_args
from mixq.nn import FBSConv2d, QAct, QConv2d, QLinear, QLutAct, ZeroInsert

STAGES = ("quantize", "engine", "export", "estimate")
_ALL = frozenset(STAGES)
_NO_ENGINE = frozenset({"quantize", "estimate"})


@dataclass(frozen=True)
class Kind:
    """A row of the op table: the LayerSpec kind (``None``: no spec, edges pass through) and the
    stages that support it."""

    spec: str | None
    stages: frozenset[str] = _ALL
    note: str = ""


KINDS: dict[str, Kind] = {
    "conv": Kind("conv"), "linear": Kind("linear"), "bn": Kind("bn"), "qact": Kind(None),
    "qconv": Kind("conv"), "qlinear": Kind("linear"), "qlut": Kind("act", note="a quantized lookup table"),
    "relu": Kind("relu"), "relu6": Kind("relu6"), "hardtanh": Kind("act"),
    "clamp": Kind("act", note="torch.clamp / Tensor.clamp with python-number limits"),
    "lut": Kind("act", note="an integer lookup table on its quantized input"),
    "softmax": Kind("act", _NO_ENGINE, "softmax is not elementwise: no lookup table computes it"),
    "maxpool": Kind("maxpool"), "avgpool": Kind("avgpool"), "adaptive_avgpool": Kind("?pool"),
    "mean": Kind("?mean"), "amax": Kind("?reduce", note="a channel max (spec reduce) or a global max pool"),
    "mul": Kind("mul", note="an elementwise product of two tensors (size-1 dims broadcast) or by a python scalar"),
    "div": Kind("mul", note="a division by a python scalar: the product by its inverse"),
    "add": Kind("add"), "cat": Kind("concat"),
    "flatten": Kind("flatten"), "reshape": Kind("?flatten"), "unsqueeze": Kind(None), "squeeze": Kind(None),
    "pad": Kind("pad"), "zero_insert": Kind("zero_insert"), "pixel_shuffle": Kind("pixel_shuffle"),
    "upsample": Kind("upsample"), "permute": Kind("transpose"),
    "index": Kind(None, note="x[:, None] / x[..., None]: unit dims inserted by indexing"),
    "split": Kind(None, note="chunk / split along a non-batch dim: its parts are slices"),
    "slice": Kind(None, note="a contiguous range of one non-batch dim: a part of a split, x[:, a:b], narrow"),
    "identity": Kind(None), "size": Kind(None),
    "gather": Kind(None, note="index_select of a non-batch dim by a constant index: data movement"),
    "index_constant": Kind(None, note="a constant tensor read only as the indices of index_select"),
    "repeat": Kind(None, note="x.repeat of one non-batch dim (VNet's channel copies): an index_select, data movement"),
    "zeros": Kind(None, note="torch.zeros_like: zero codes on its input's grid"),
    "fbs": Kind("other", frozenset({"quantize", "engine"}), "a channel-gated conv (FBS): hw.dynamic prices it"),
    "float_compute": Kind("other", frozenset(), "a compute layer mixq does not quantize"),
    "unsupported": Kind("other", frozenset(), "no stage of mixq knows this op"),
}

# Why an op of no kind is not run, where it is a known op (by its type or function name): said with the refusal.
_PER_IMAGE_NORM = (" (it normalizes each image by its own mean and variance, computed at run time: no fixed integer "
                   "pipeline does that division; train the model with BatchNorm, which folds into the conv, e.g. "
                   "MONAI's norm='batch')")
UNSUPPORTED_WHY: dict[str, str] = {t: _PER_IMAGE_NORM for t in (
    "InstanceNorm1d", "InstanceNorm2d", "GroupNorm", "LayerNorm", "instance_norm", "group_norm", "layer_norm")}


def unsupported_why(op_type: str) -> str:
    """The reason :data:`UNSUPPORTED_WHY` gives for an op's type (``torch.nn.functional.group_norm`` is looked up
    as ``group_norm``), ``""`` where it gives none."""
    return UNSUPPORTED_WHY.get(op_type.rsplit(".", 1)[-1], "")

MODULE_KINDS: dict[type[nn.Module], str] = {
    FBSConv2d: "fbs", QAct: "qact", QConv2d: "qconv", QLinear: "qlinear", QLutAct: "qlut", ZeroInsert: "zero_insert",
    nn.Conv2d: "conv", nn.Linear: "linear", _BatchNorm: "bn",
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
    nn.Hardswish: "lut", nn.Hardsigmoid: "lut", nn.SiLU: "lut", nn.Sigmoid: "lut", nn.Tanh: "lut",
    nn.GELU: "lut", nn.ELU: "lut", nn.LeakyReLU: "lut", nn.Mish: "lut",
    nn.Softmax: "softmax", nn.LogSoftmax: "softmax",
    nn.MaxPool2d: "maxpool", nn.AdaptiveMaxPool2d: "maxpool", nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool2d: "adaptive_avgpool", nn.Flatten: "flatten",
    nn.ZeroPad2d: "pad", nn.ConstantPad2d: "pad", nn.PixelShuffle: "pixel_shuffle", nn.Upsample: "upsample",
    nn.Identity: "identity", nn.Dropout: "identity", nn.Dropout1d: "identity", nn.Dropout2d: "identity",
    nn.Dropout3d: "identity",
    nn.AlphaDropout: "identity", nn.FeatureAlphaDropout: "identity",
}
FUNCTION_KINDS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "hardtanh_": "hardtanh",
    "clamp": "clamp", "clip": "clamp", "truediv": "div", "div": "div",
    "hardswish": "lut", "hardsigmoid": "lut", "silu": "lut", "sigmoid": "lut", "tanh": "lut", "gelu": "lut",
    "elu": "lut", "leaky_relu": "lut", "mish": "lut", "softmax": "softmax", "log_softmax": "softmax",
    "max_pool2d": "maxpool", "_max_pool2d": "maxpool", "max_pool2d_with_indices": "maxpool",
    "adaptive_max_pool2d": "maxpool", "avg_pool2d": "avgpool", "adaptive_avg_pool2d": "adaptive_avgpool",
    "mean": "mean", "amax": "amax", "mul": "mul", "imul": "mul", "multiply": "mul",
    "flatten": "flatten", "reshape": "reshape", "add": "add", "iadd": "add",
    "cat": "cat", "concat": "cat", "concatenate": "cat", "pad": "pad", "pixel_shuffle": "pixel_shuffle",
    "interpolate": "upsample", "upsample": "upsample", "unsqueeze": "unsqueeze", "squeeze": "squeeze",
    "permute": "permute", "transpose": "permute", "swapaxes": "permute", "swapdims": "permute",
    "chunk": "split", "split": "split", "narrow": "slice", "zeros_like": "zeros", "index_select": "gather",
    "dropout": "identity", "dropout1d": "identity", "dropout2d": "identity", "dropout3d": "identity",
    "feature_dropout": "identity",
    "alpha_dropout": "identity", "contiguous": "identity", "clone": "identity", "detach": "identity",
    "input_guard": "identity",
    "conv1d": "float_compute", "conv2d": "float_compute", "conv3d": "float_compute",
    "conv_transpose1d": "float_compute", "conv_transpose2d": "float_compute", "linear": "float_compute",
    "matmul": "float_compute", "bilinear": "float_compute",
}
METHOD_KINDS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "sigmoid": "lut", "tanh": "lut", "flatten": "flatten", "add": "add",
    "add_": "add", "mean": "mean", "amax": "amax", "mul": "mul", "mul_": "mul", "multiply": "mul",
    "view": "reshape", "reshape": "reshape", "unsqueeze": "unsqueeze",
    "squeeze": "squeeze", "contiguous": "identity", "clone": "identity", "detach": "identity", "size": "size",
    "dim": "size", "permute": "permute", "transpose": "permute", "swapaxes": "permute", "swapdims": "permute",
    "chunk": "split", "split": "split", "narrow": "slice", "float": "identity", "clamp": "clamp", "clip": "clamp",
    "div": "div", "index_select": "gather", "repeat": "repeat",
}
_OPERATOR_KINDS: dict[Callable[..., Any], str] = {operator.add: "add", operator.iadd: "add",
                                                  operator.getitem: "getitem"}


def module_kind(m: nn.Module) -> str:
    """The kind of a module call: the first class of its hierarchy in :data:`MODULE_KINDS`."""
    for cls in type(m).__mro__:
        kind = MODULE_KINDS.get(cls)
        if kind is not None:
            return kind
    return "float_compute" if isinstance(m, COMPUTE_TYPES) else "unsupported"


def _unit_index(index: Any) -> bool:
    """An index that only inserts unit dims after the batch dim (``x[:, None]``, ``x[..., None]``): full
    slices, ``None`` and ``...``, with at least one ``None`` and none first."""
    idx = index if isinstance(index, tuple) else (index,)
    full = all(i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in idx)
    return full and None in idx and idx[0] is not None


def _range_index(index: Any) -> bool:
    """An index that keeps a contiguous range of some non-batch dims (``x[:, 2:5]``, ``x[:, :, 1:]``,
    ``x[:, :, :-1, :-1]``): slices with step 1 and int or missing bounds, the batch dim's full."""
    idx = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) for i in idx) or len(idx) < 2 or idx[0] != slice(None):
        return False
    cut = [i for i in idx if i != slice(None)]
    return len(cut) >= 1 and all(c.step in (None, 1) and all(
        b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in (c.start, c.stop)) for c in cut)


def function_kind(target: Any, args: tuple[Any, ...] = ()) -> str:
    if target is operator.getitem and len(args) == 2 and _unit_index(args[1]):
        return "index"
    if target is operator.getitem and len(args) == 2 and _range_index(args[1]):
        return "slice"
    if target is getattr and len(args) == 2 and args[1] in ("shape", "ndim"):
        return "size"
    if target in _OPERATOR_KINDS:
        return _OPERATOR_KINDS[target]
    name = getattr(target, "__name__", str(target))
    return FUNCTION_KINDS.get(name, FUNCTION_KINDS.get(name.strip("_"), "unsupported"))


def method_kind(target: str) -> str:
    return METHOD_KINDS.get(target, METHOD_KINDS.get(target.strip("_"), "unsupported"))


# ------------------------------------------------------------------------------------------ tracing
def _is_leaf_type(m: nn.Module) -> bool:
    """A module the op table knows (along its class hierarchy) or a compute module: called whole."""
    return isinstance(m, COMPUTE_TYPES) or any(cls in MODULE_KINDS for cls in type(m).__mro__)


class Tracer(fx.Tracer):
    """The one FX tracer: compute modules, BatchNorm, mixq modules and ``torch.nn`` modules are leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _is_leaf_type(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any | None = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        """A ``split`` into a list of sizes is a proxy that knows its number of parts, so a forward can iterate
        over them (MixNet's ``for x_i, conv in zip(torch.split(x, sizes, 1), convs)``)."""
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        is_split = (kind == "call_function" and target in (torch.split, torch.Tensor.split)) or (
            kind == "call_method" and target == "split")
        sizes = kwargs.get("split_size_or_sections", args[1] if len(args) > 1 else None)
        if is_split and isinstance(sizes, list | tuple) and all(isinstance(v, int) for v in sizes):
            return _Parts(p.node, self, len(sizes))
        return p

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """The graph without the forward's type annotations: under ``from __future__ import
        annotations`` they are strings, which FX keeps as globals that cannot be pickled (a traced
        model shipped to a worker process, ``torch.save``)."""
        with _proxies_are_tensors():
            graph = super().trace(root, concrete_args)
        for node in graph.nodes:
            node.type = None
        return graph


@contextmanager
def _proxies_are_tensors() -> Iterator[None]:
    """``torch.jit.isinstance(x, torch.Tensor)`` is true of a traced tensor: a forward that tests its optional
    input that way (MONAI's ``UpCat``: ``if x_e is not None and torch.jit.isinstance(x_e, torch.Tensor)``) would
    otherwise be traced down its other branch; and ``torch.as_tensor(x)`` of a traced tensor is the tensor (MONAI's
    ``HighResBlock``), where torch would read it as an array."""
    real, as_tensor = torch.jit.isinstance, torch.as_tensor

    def isinstance_(obj: Any, target_type: Any) -> bool:
        return (isinstance(obj, fx.Proxy) and target_type is torch.Tensor) or real(obj, target_type)

    def as_tensor_(data: Any, *args: Any, **kwargs: Any) -> Any:
        return data if isinstance(data, fx.Proxy) and not args and not kwargs else as_tensor(data, *args, **kwargs)

    torch.jit.isinstance, torch.as_tensor = isinstance_, as_tensor_  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.jit.isinstance, torch.as_tensor = real, as_tensor  # type: ignore[assignment]


def live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The nodes the graph's output reads, directly or through others (the output node itself included)."""
    live: set[fx.Node] = set()
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(n.all_input_nodes)
    return live


@contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode without gradients for the block; its modules' training flags are restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


def check_trace(gm: fx.GraphModule, model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
                stage: str = "normalize") -> None:
    """The traced graph computes what ``model``'s own forward computes on a random input of ``batch`` samples
    (inference semantics), or one :class:`ModelError`: a forward that branches on something tracing does not see
    (an ``isinstance`` test, a tensor's values) is traced down one branch only. A model whose own forward fails is
    left to the stage that runs it."""
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(1))
    name = type(model).__name__
    with inference_mode(model), inference_mode(gm):
        try:
            want = model(x)
        except Exception:  # noqa: BLE001 - the stage that runs the model reports it
            return
        try:
            got = gm(x)
        except Exception as exc:
            raise ModelError(f"{stage}: the traced graph of {name} fails where its own forward runs "
                             f"({str(exc).splitlines()[0]}): the forward takes a branch tracing does not see; "
                             "export it with torch.onnx.export and pass the .onnx file instead") from exc
    gots, wants = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    same = len(gots) == len(wants) and all(
        not isinstance(w, torch.Tensor) or (isinstance(g, torch.Tensor) and g.shape == w.shape and torch.allclose(
            g, w, rtol=1e-4, atol=1e-5 * max(1.0, float(w.abs().nan_to_num().max()) if w.numel() else 1.0),
            equal_nan=True)) for g, w in zip(gots, wants, strict=True))
    if not same:
        raise ModelError(f"{stage}: the traced graph of {name} computes another output than its own forward on a "
                         "random input: the forward takes a branch tracing does not see (an isinstance test, a "
                         "tensor's values); export it with torch.onnx.export and pass the .onnx file instead")


class _Parts(fx.Proxy):
    """The result of a split into a known number of parts: iterable (each part a ``getitem``)."""

    def __init__(self, node: fx.Node, tracer: fx.Tracer, n: int) -> None:
        super().__init__(node, tracer)
        self.n = n

    def __iter__(self) -> Any:
        return iter([self[i] for i in range(self.n)])  # type: ignore[index]

    def __len__(self) -> int:
        return self.n


class _ShapeProp(fx.Interpreter):
    """One forward with inference semantics, recording each node's output shape in ``meta["shape"]``
    (a tuple with the batch dimension; a list of them for multi-output nodes; absent for non-tensors)."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(int(s) for s in result.shape)
        elif isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
            n.meta["shape"] = [tuple(int(s) for s in r.shape) if isinstance(r, torch.Tensor) else None
                               for r in result]
        else:
            n.meta.pop("shape", None)
        return result

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        m = self.fetch_attr(target)
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                          nn.FeatureAlphaDropout)):
            return args[0]
        if isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward:
            stats = m.running_mean is not None and m.running_var is not None
            return F.batch_norm(args[0], m.running_mean, m.running_var, m.weight, m.bias,
                                training=not stats, momentum=0.0, eps=m.eps)
        return super().call_module(target, args, kwargs)


def trace(model: nn.Module, example: torch.Tensor | None = None, *, stage: str = "capture") -> fx.GraphModule:
    """``model`` as an FX graph sharing its modules; with ``example`` (a batch) every node's shape is
    recorded (``meta["shape"]``) by one forward with inference semantics (BatchNorm on its running
    statistics, no dropout, no gradient; the model itself is not changed). A model FX cannot trace,
    or whose forward fails, is one :class:`ModelError` naming ``stage``."""
    if isinstance(model, fx.GraphModule) and example is None:
        return model
    try:
        gm = model if isinstance(model, fx.GraphModule) else fx.GraphModule(model, Tracer().trace(model))
    except Exception as exc:  # FX raises many types (TraceError, TypeError, NotImplementedError ...)
        raise ModelError(f"{stage}: torch.fx cannot trace {type(model).__name__} ({str(exc).splitlines()[0]}); "
                         "export it with torch.onnx.export and pass the .onnx file instead") from exc
    if example is not None:
        with torch.no_grad():
            try:
                _ShapeProp(gm).run(example)
            except Exception as exc:
                raise ModelError(f"{stage}: forward of {type(model).__name__} on an input of shape "
                                 f"{tuple(example.shape)} failed: {str(exc).splitlines()[0]}") from exc
    return gm


# ------------------------------------------------------------------------------------------ classification
@dataclass(frozen=True)
class NodeOp:
    """A classified node: ``kind`` (a key of :data:`KINDS`), readable ``name``, the ``type`` named in
    messages, and the called module (``None`` for functions and methods)."""

    kind: str
    name: str
    type: str
    module: nn.Module | None

    @property
    def stages(self) -> frozenset[str]:
        return KINDS[self.kind].stages if self.kind in KINDS else frozenset()


def node_ops(gm: fx.GraphModule) -> dict[fx.Node, NodeOp]:
    """Every ``call_*`` and ``get_attr`` node with its kind and name (see the module docstring)."""
    calls: Counter[str] = Counter()
    out: dict[fx.Node, NodeOp] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            target = str(node.target)
            mod = gm.get_submodule(target)
            k = calls[target]
            calls[target] += 1
            out[node] = NodeOp(module_kind(mod), target if k == 0 else f"{target}:{k}", type(mod).__name__, mod)
        elif node.op == "call_function":
            fname = getattr(node.target, "__name__", str(node.target))
            kind = function_kind(node.target, node.args)
            src = node.args[0] if node.args else None
            if kind == "getitem" and isinstance(src, fx.Node) and src in out and out[src].kind in ("size", "split"):
                kind = {"size": "size", "split": "slice"}[out[src].kind]  # x.shape[0]; a part of a chunk / split
            ins = node.all_input_nodes
            if ins and all(i in out and out[i].kind == "size" for i in ins):
                kind = "size"  # python arithmetic on sizes: c // 2, n * c
            out[node] = NodeOp(kind, node.name, fname, None)
        elif node.op == "call_method":
            out[node] = NodeOp(method_kind(str(node.target)), node.name, f"Tensor.{node.target}", None)
        elif node.op == "get_attr":
            kind = "index_constant" if node.users and all(_index_of(u) is node for u in node.users) else "constant"
            out[node] = NodeOp(kind, str(node.target), "tensor constant", None)
    return out


def _index_of(node: fx.Node) -> Any:
    """The index operand of an ``index_select`` call (``None`` for any other node)."""
    if (node.op == "call_function" and getattr(node.target, "__name__", "") == "index_select") or (
            node.op == "call_method" and node.target == "index_select"):
        return fn_args(node, ("input", "dim", "index"), {}).get("index")
    return None


def constant_value(node: fx.Node) -> torch.Tensor:
    """The tensor a ``get_attr`` node reads from the graph's module."""
    obj: Any = node.graph.owning_module
    for atom in str(node.target).split("."):
        obj = getattr(obj, atom)
    if not isinstance(obj, torch.Tensor):
        raise ModelError(f"layer {node.name!r}: {node.target!r} is not a tensor")
    return obj


def unsupported(ops: dict[fx.Node, NodeOp], stage: str) -> list[NodeOp]:
    """The nodes (in graph order) whose kind ``stage`` does not support."""
    return [op for op in ops.values() if op.kind not in ("constant", "getitem") and stage not in op.stages]


def support(op: NodeOp, reads_constant: bool = False) -> str:
    """One word per stage for a node: ``ok`` when every stage supports it, else the stages that don't.
    ``reads_constant``: an operand is a tensor constant, which the integer engine has no integer grid for."""
    missing = [s for s in STAGES if s not in op.stages or (reads_constant and s == "engine")]
    if not missing or op.kind in ("constant", "getitem"):
        return "ok"
    return "no " + "/".join(missing)


# ------------------------------------------------------------------------------------------ node helpers
def shape_of(node: fx.Node) -> tuple[int, ...]:
    """Per-sample shape (batch dimension dropped) recorded by :func:`trace` with an example."""
    shape = node.meta.get("shape")
    if not isinstance(shape, tuple):
        raise ModelError(f"layer {node.name!r}: no tensor shape recorded (not a tensor op?)")
    return shape[1:]


def fn_args(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments of a call node by parameter name (``names`` in order)."""
    return bind_args(names, node.args, dict(node.kwargs), defaults)


def call_name(node: fx.Node) -> str:
    """The name a ``call_method`` / ``call_function`` node calls (``view``, ``stack`` ...); ``""`` for other nodes."""
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", node.target))
    return ""


def permutation(node: fx.Node, rank: int) -> tuple[int, ...]:
    """The axis order of a ``permute`` (``dims``) or ``transpose`` / ``swapaxes`` / ``swapdims`` (two axes
    swapped) node on a tensor of ``rank`` dims, batch included: output axis ``i`` is input axis ``perm[i]``."""
    name = call_name(node)
    rest: list[Any] = list(node.args[1:])
    if name == "permute":
        dims: Any = rest[0] if len(rest) == 1 and isinstance(rest[0], list | tuple) else rest or node.kwargs.get("dims")
        perm = [int(d) % rank for d in (dims or [])]
    else:
        a = fn_args(node, ("input", "dim0", "dim1"), {})
        if "dim0" not in a:  # swapaxes(axis0, axis1) / swapdims(dim0, dim1) by keyword
            a = {"dim0": a.get("axis0"), "dim1": a.get("axis1")}
        perm = list(range(rank))
        i, j = int(a["dim0"]) % rank, int(a["dim1"]) % rank
        perm[i], perm[j] = perm[j], perm[i]
    if sorted(perm) != list(range(rank)):
        raise ModelError(f"layer {node.name!r}: {name} dims {perm} are not a permutation of {rank} axes")
    return tuple(perm)


def sample_axes(node: fx.Node, rank: int) -> list[int] | None:
    """The per-sample axis order of a ``permute`` / ``transpose`` node on a tensor of ``rank`` dims (batch included):
    per-sample output axis ``i`` is per-sample input axis ``axes[i]``; ``None`` where it moves the batch axis."""
    perm = permutation(node, rank)
    return [p - 1 for p in perm[1:]] if perm[0] == 0 else None


def slice_ranges(node: fx.Node) -> list[tuple[int, int, int]]:
    """``(dim, start, stop)`` of each dim a ``slice`` node cuts (a part of a ``chunk`` / ``split``, ``x[:, a:b]``,
    ``x[:, :, :-1, :-1]``, ``narrow``): the range of ``dim`` (batch included, so >= 1 for a per-sample dim;
    negative dims resolved) it keeps, in dim order. Needs the shapes :func:`trace` records with an example."""
    src = node.args[0]
    if not isinstance(src, fx.Node):
        raise ModelError(f"layer {node.name!r}: slice of something that is not a tensor")
    shape = src.meta.get("shape")
    if node.op == "call_function" and node.target is operator.getitem and isinstance(shape, list):  # a split part
        i = int(node.args[1])  # type: ignore[arg-type]
        a = fn_args(src, ("input", "size", "dim"), {"dim": 0})
        parts = [s for s in shape if s is not None]
        rank = len(parts[0])
        dim = int(a["dim"]) % rank
        start = sum(p[dim] for p in parts[:i])
        return [(dim, start, start + parts[i][dim])]
    if not isinstance(shape, tuple):
        raise ModelError(f"layer {node.name!r}: no tensor shape recorded for its input")
    rank = len(shape)
    if node.op == "call_function" and node.target is operator.getitem:  # x[:, a:b]
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        out = []
        for dim, cut in enumerate(idx):
            if isinstance(cut, slice) and cut != slice(None):
                start, stop, _ = cut.indices(shape[dim])
                out.append((dim, start, max(start, stop)))
        return out
    a = fn_args(node, ("input", "dim", "start", "length"), {})  # narrow
    dim = int(a["dim"]) % rank
    start = int(a["start"]) % shape[dim] if int(a["start"]) < 0 else int(a["start"])
    return [(dim, start, start + int(a["length"]))]


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The node's tensor operands (FX nodes among its positional args, flattening lists)."""
    found: list[fx.Node] = []
    for a in node.args:
        if isinstance(a, fx.Node):
            found.append(a)
        elif isinstance(a, list | tuple):
            found.extend(x for x in a if isinstance(x, fx.Node))
    return found
