"""ONNX model -> ``torch.fx.GraphModule`` made of standard ``torch.nn`` modules.

    gm = import_onnx("net.onnx")          # or an onnx.ModelProto
    gm.input_shape                         # (C, H, W) or (C, L) per sample, None when not static
    gm.source_format                       # "onnx"

The graph is rebuilt op by op (the handler table :data:`mixq.zoo.onnx_ops.OPS`): ``Conv`` becomes
``nn.Conv2d`` / ``nn.Conv1d``, ``Gemm`` and ``MatMul`` by a constant become ``nn.Linear``, and so on,
with the ONNX constants copied into the modules' parameters and buffers (float32), so code that
recognises ``nn.Conv2d`` or ``nn.Linear`` by ``isinstance`` sees them. Submodules are named after the
layer: its weight's name (``layer1.0.conv1.weight``), else the dynamo exporter's name scope, else the
legacy exporter's node name (``/layer1/layer1.0/conv1/Conv``); all three give ``layer1_0_conv1``.

Constant subgraphs (``Constant``, ``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``...) are folded with
numpy; a folded value that holds the batch size may only be the batch entry of a ``Reshape`` or
``Resize`` target, so the module accepts any batch size. Shapes are inferred with the batch fixed to
one (or to its static value); where the input's shape is static, every mapped node is also run on
zeros as it is emitted, its output shape checked against the inferred one and standing in for it
where the inference lost dims (computed ``Pad`` pads, ``Transpose``...), so later handlers see
exact shapes. Any other op, attribute combination, or a graph with more than one input or output is
one :class:`~mixq.errors.ModelError` naming the file and the node.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from mixq.errors import MixqError, ModelError
from mixq.names import UniqueNames
from mixq.zoo.onnx_ops import OPS

__all__ = ["Ctx", "import_onnx", "one_line", "require_onnx", "sanitize", "set_info"]

Shape = tuple[int | None, ...]
Fold = Callable[[list[Any], dict[str, Any]], np.ndarray]
_PRESERVED = "_user_preserved_attributes"  # GraphModule.meta key whose entries survive copy.deepcopy


def require_onnx() -> Any:
    """The ``onnx`` module, or a :class:`~mixq.errors.MixqError` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise MixqError("reading ONNX models needs the onnx package: pip install onnx") from None
    return onnx


def set_info(gm: fx.GraphModule, **info: Any) -> None:
    """Set attributes (``input_shape``, ``source_format``) that ``copy.deepcopy`` keeps."""
    keep = gm.meta.setdefault(_PRESERVED, {})
    for key, value in info.items():
        setattr(gm, key, value)
        keep[key] = value


def one_line(text: object, limit: int = 240) -> str:
    return " ".join(str(text).split())[:limit]


# ---------------------------------------------------------------------------------------------- names


def _scope_path(node: Any) -> str | None:
    """The module path the dynamo exporter records (``pkg.torch.onnx.name_scopes``), e.g. ``layer1.0.conv1``."""
    for prop in getattr(node, "metadata_props", ()):
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = re.findall(r"'([^']*)'", prop.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    return None


def _name_path(name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0_conv1``: the legacy exporter's scopes without the op
    (a scope repeated as the prefix of the next one, ``layer1`` of ``layer1.0``, once)."""
    if "/" not in name:
        return name
    parts = [p for p in name.split("/") if p][:-1]
    kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    return "_".join(kept)


def sanitize(text: str) -> str:
    """A readable Python identifier: non-word characters -> ``_``, a leading digit prefixed with ``m``."""
    ident = re.sub(r"_+", "_", re.sub(r"\W", "_", text, flags=re.ASCII)).strip("_")
    if ident and ident[0].isdigit():
        ident = "m" + ident
    if keyword.iskeyword(ident) or hasattr(fx.GraphModule, ident):
        ident += "_"
    return ident


def base_name(node: Any) -> str:
    """A layer's weight name (``layer1.0.conv1.weight``: it survives the exporters' Conv+BN fusion), else the
    dynamo exporter's name scope, else the node name; the op type when none says anything."""
    weight = node.input[1] if len(node.input) > 1 else ""
    if weight.endswith(".weight") and "::" not in weight:
        path: str | None = weight.removesuffix(".weight")
    else:
        path = _scope_path(node)
    return sanitize(path if path is not None else _name_path(node.name)) or sanitize(node.op_type.lower())


# ---------------------------------------------------------------------------------------------- context


@dataclass
class Ctx:
    """Build state: the FX graph under construction, its root module, and what is known of each tensor."""

    label: str
    nodes: list[Any]
    shapes: dict[str, Shape]
    opset: int
    batch: int
    graph: fx.Graph = field(default_factory=fx.Graph)
    root: nn.Module = field(default_factory=nn.Module)
    env: dict[str, fx.Node] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # where a constant holds the batch size
    buffers: dict[str, fx.Node] = field(default_factory=dict)  # constants registered as buffers
    consumers: dict[str, list[int]] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    skip: set[int] = field(default_factory=set)
    names: UniqueNames = field(default_factory=UniqueNames)
    # shape propagation: every emitted FX node run once on a zero example (None: the input is not static)
    examples: dict[fx.Node, Any] | None = None
    ran: fx.Node | None = None  # the last FX node run
    pending: list[tuple[Any, str]] = field(default_factory=list)  # (ONNX node, output) put since the last run
    reads_left: dict[str, int] = field(default_factory=dict)  # ONNX tensor -> consumers not yet passed
    live: dict[fx.Node, int] = field(default_factory=dict)  # FX node -> ONNX tensors it holds still to be read

    # -------------------------------------------------------------- errors and attributes

    def error(self, node: Any, why: str) -> ModelError:
        name = node.name or f"<unnamed, output {node.output[0] if node.output else '?'}>"
        return ModelError(f"{self.label}: ONNX node '{name}' ({node.op_type}): {why}")

    def unsupported(self, node: Any, why: str) -> ModelError:
        return self.error(node, f"not supported by the ONNX import ({why})")

    @staticmethod
    def attrs(node: Any) -> dict[str, Any]:
        from onnx import helper

        out: dict[str, Any] = {}
        for a in node.attribute:
            value = helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
        return out

    # -------------------------------------------------------------- tensors

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def used(self, name: str) -> bool:
        return bool(name) and (name in self.outputs or bool(self.consumers.get(name)))

    def sole_consumer(self, name: str) -> tuple[int, Any] | None:
        users = self.consumers.get(name, [])
        if name in self.outputs or len(users) != 1:
            return None
        return users[0], self.nodes[users[0]]

    def static_shape(self, node: Any, name: str) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape):
            raise self.unsupported(node, f"the shape of '{name}' is not static: {shape}")
        return tuple(int(d) for d in shape if d is not None)

    def rank(self, node: Any, name: str) -> int:
        shape = self.shapes.get(name)
        if shape is None:
            raise self.unsupported(node, f"the rank of '{name}' is not known")
        return len(shape)

    def const(self, node: Any, i: int, *, batch_ok: bool = False) -> np.ndarray | None:
        """Input ``i`` as a constant (None when the optional input is absent); refuses a computed one."""
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.consts:
            raise self.unsupported(node, f"input {i} '{name}' is computed at run time, not a constant")
        mask = self.masks.get(name)
        if mask is not None and (not batch_ok or mask.ndim != 1 or mask[1:].any()):
            raise self.unsupported(node, f"input {i} '{name}' depends on the batch size")
        return self.consts[name]

    def weight(self, node: Any, i: int) -> np.ndarray:
        value = self.const(node, i)
        if value is None or value.dtype.kind != "f":
            raise self.unsupported(node, f"input {i} must be a constant float tensor")
        return value.astype(np.float32)

    def ints(self, node: Any, i: int, attr: str) -> list[int] | None:
        """An int list given as attribute ``attr`` (older opsets) or as constant input ``i``."""
        value = self.attrs(node).get(attr)
        if value is None:
            arr = self.const(node, i)
            value = None if arr is None else arr.reshape(-1).tolist()
        return None if value is None else [int(v) for v in value]

    def value(self, node: Any, i: int) -> fx.Node:
        """Input ``i`` as an FX node: a computed tensor, or a constant registered as a buffer."""
        name = node.input[i]
        if name in self.env:
            return self.env[name]
        if name in self.consts:
            self.const(node, i)  # refuses batch-dependent constants
            if name not in self.buffers:
                arr = self.consts[name]
                tensor = torch.from_numpy(np.array(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype))
                target = self.unique(base_name(node) + "_const")
                self.root.register_buffer(target, tensor)
                self.buffers[name] = self._tag(self.graph.get_attr(target), node)
            return self.buffers[name]
        raise self.error(node, f"input '{name}' is not produced by any node")

    # -------------------------------------------------------------- emitting

    def unique(self, base: str) -> str:
        return self.names.take(base)

    @staticmethod
    def _tag(fx_node: fx.Node, node: Any) -> fx.Node:
        fx_node.meta["onnx_node"] = (node.name, node.op_type)
        return fx_node

    def module(self, node: Any, mod: nn.Module, args: Sequence[Any], suffix: str = "",
               name_from: Any = None) -> fx.Node:
        target = self.unique(base_name(name_from or node) + suffix)
        self.root.add_module(target, mod)
        return self._tag(self.graph.call_module(target, tuple(args)), node)

    def function(self, node: Any, fn: Callable[..., Any], args: Sequence[Any],
                 kwargs: dict[str, Any] | None = None) -> fx.Node:
        return self._tag(self.graph.call_function(fn, tuple(args), kwargs or {}), node)

    def method(self, node: Any, name: str, args: Sequence[Any]) -> fx.Node:
        return self._tag(self.graph.call_method(name, tuple(args)), node)

    def put(self, node: Any, fx_node: fx.Node, i: int = 0) -> None:
        """Output ``i`` of ``node`` is ``fx_node`` (its shape is then computed and checked: :func:`_propagate`)."""
        fx_node.meta["onnx_output"] = node.output[i]
        self.alias(node, fx_node, i)

    def alias(self, node: Any, fx_node: fx.Node, i: int = 0) -> None:
        """Output ``i`` of ``node`` is the already computed ``fx_node`` (an identity)."""
        name = node.output[i]
        self.env[name] = fx_node
        self.pending.append((node, name))
        if self.reads_left.get(name) or name in self.outputs:
            self.live[fx_node] = self.live.get(fx_node, 0) + 1

    def fuse(self, index: int, node: Any, fx_node: fx.Node) -> None:
        """The consumer ``node`` (at ``index``) is computed by ``fx_node`` too: it is not handled on its own."""
        self.skip.add(index)
        self.put(node, fx_node)


# ---------------------------------------------------------------------------------------------- constant folding


def _axes(v: list[Any], a: dict[str, Any], rank: int) -> list[int] | None:
    axes = a.get("axes")
    if axes is None and len(v) > 1 and v[1] is not None:
        axes = v[1].reshape(-1).tolist()
    return None if axes is None else sorted(int(x) % rank for x in axes)


def _unsqueeze(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    n = len(a["axes"]) if "axes" in a else v[1].size
    return np.expand_dims(v[0], tuple(_axes(v, a, v[0].ndim + n) or ()))


def _squeeze(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    axes = _axes(v, a, max(v[0].ndim, 1))
    return np.squeeze(v[0], axis=None if axes is None else tuple(axes))


def _slice(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    if "starts" in a:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = v[1].tolist(), v[2].tolist()
        axes = v[3].tolist() if len(v) > 3 and v[3] is not None else None
        steps = v[4].tolist() if len(v) > 4 and v[4] is not None else None
    index = [slice(None)] * v[0].ndim
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        index[int(axes[k]) if axes is not None else k] = slice(int(s), int(e), int(steps[k]) if steps else 1)
    return v[0][tuple(index)]


def _reshape(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    keep_zero = bool(a.get("allowzero", 0))
    shape = [v[0].shape[i] if s == 0 and not keep_zero else int(s) for i, s in enumerate(v[1].tolist())]
    return np.reshape(v[0], shape)


def _div(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    x, y = v[0], v[1]
    if x.dtype.kind in "iu":  # ONNX integer division truncates toward zero
        return (np.abs(x) // np.abs(y) * np.sign(x) * np.sign(y)).astype(x.dtype)
    return np.asarray(x / y, dtype=x.dtype)


def _constant_of_shape(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    return np.full(tuple(int(s) for s in v[0].reshape(-1)), value.reshape(-1)[0], dtype=value.dtype)


def _cast(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    from onnx import helper

    return v[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))


def _shape(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    return np.array(v[0].shape, dtype=np.int64)[a.get("start", 0):a.get("end")]


def _constant(v: list[Any], a: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    if "value" in a:
        return np.asarray(numpy_helper.to_array(a["value"]))
    table = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    for key, dtype in table.items():
        if key in a:
            return np.array(a[key], dtype=dtype)
    raise ValueError(f"a constant given as {', '.join(a) or 'nothing'}")


def _elementwise(fn: Callable[..., Any]) -> Fold:
    return lambda v, a: np.asarray(fn(*v))


FOLD: dict[str, Fold] = {
    "Constant": _constant,
    "Identity": lambda v, a: v[0],
    "Cast": _cast,
    "Shape": _shape,
    "Size": lambda v, a: np.array(v[0].size, dtype=np.int64),
    "Gather": lambda v, a: np.take(v[0], v[1].astype(np.int64), axis=int(a.get("axis", 0))),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda v, a: np.concatenate([x for x in v if x is not None], axis=int(a["axis"])),
    "Reshape": _reshape,
    "Slice": _slice,
    "Transpose": lambda v, a: np.transpose(v[0], a.get("perm")),
    "Expand": lambda v, a: np.array(np.broadcast_to(v[0], np.broadcast_shapes(v[0].shape, tuple(v[1].tolist())))),
    "Tile": lambda v, a: np.tile(v[0], v[1].tolist()),
    "ConstantOfShape": _constant_of_shape,
    "Range": lambda v, a: np.arange(v[0], v[1], v[2], dtype=v[0].dtype),
    "Div": _div,
    "Add": _elementwise(np.add), "Sub": _elementwise(np.subtract), "Mul": _elementwise(np.multiply),
    "Pow": _elementwise(np.power), "Neg": _elementwise(np.negative), "Abs": _elementwise(np.abs),
    "Floor": _elementwise(np.floor), "Ceil": _elementwise(np.ceil), "Sqrt": _elementwise(np.sqrt),
    "Equal": _elementwise(np.equal), "Less": _elementwise(np.less), "Greater": _elementwise(np.greater),
    "Not": _elementwise(np.logical_not), "Where": _elementwise(np.where),
    "Min": lambda v, a: functools.reduce(np.minimum, v), "Max": lambda v, a: functools.reduce(np.maximum, v),
}
# ops that move entries around: which inputs are data (None: all); the batch mask follows the same moves
_STRUCTURAL: dict[str, tuple[int, ...] | None] = {
    "Identity": (0,), "Cast": (0,), "Gather": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Concat": None,
    "Reshape": (0,), "Slice": (0,), "Transpose": (0,), "Expand": (0,), "Tile": (0,),
}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Equal", "Less",
                "Greater", "Not", "Where", "Min", "Max"}


def _fold_mask(op: str, values: list[Any], masks: list[np.ndarray | None], out: np.ndarray,
               a: dict[str, Any]) -> np.ndarray | None:
    """Which entries of a folded value hold the batch size (None: none)."""
    if all(m is None for m in masks):
        return None
    if op in _ELEMENTWISE:
        acc = np.zeros(out.shape, dtype=bool)
        for m in masks:
            if m is not None:
                acc |= np.broadcast_to(m, out.shape)
        return acc
    data = _STRUCTURAL.get(op, ())
    data = tuple(range(len(values))) if data is None else data
    if any(m is not None and i not in data for i, m in enumerate(masks)) or op not in _STRUCTURAL:
        return np.ones(out.shape, dtype=bool)
    if op == "Cast":
        return masks[0]
    args = [(np.zeros(np.shape(x), bool) if masks[i] is None else masks[i]) if i in data else x
            for i, x in enumerate(values)]
    mask = np.asarray(FOLD[op](args, a)).astype(bool)
    return mask if mask.any() else None


def _fold(ctx: Ctx, node: Any) -> None:
    a = ctx.attrs(node)
    values = [ctx.consts[n] if n else None for n in node.input]
    masks = [ctx.masks.get(n) if n else None for n in node.input]
    try:
        out = np.asarray(FOLD[node.op_type](values, a))
        mask = _fold_mask(node.op_type, values, masks, out, a)
    except Exception as e:
        raise ctx.error(node, f"folding the constant failed ({type(e).__name__}: {one_line(e)})") from None
    _store(ctx, node.output[0], out, mask)


def _fold_shape(ctx: Ctx, node: Any) -> None:
    """Shape / Size of a computed tensor: static apart from the batch (axis 0: ``ctx.batch``, which the mask
    marks, known even where the inference lost it)."""
    name = node.input[0]
    known = ctx.shapes.get(name)
    if not known:
        raise ctx.unsupported(node, f"the rank of '{name}' is not known")
    a = ctx.attrs(node) if node.op_type == "Shape" else {}
    sl = slice(a.get("start", 0), a.get("end"))
    picked = [ctx.batch, *known[1:]][sl]
    if None in picked:
        raise ctx.unsupported(node, f"the shape of '{name}' is not static: {known}")
    dims = np.array(picked, dtype=np.int64)
    mask = np.arange(len(known))[sl] == 0
    if node.op_type == "Size":
        dims, mask = np.array(dims.prod(), dtype=np.int64), np.array(True)
    _store(ctx, node.output[0], dims, mask)


def _store(ctx: Ctx, name: str, value: np.ndarray, mask: np.ndarray | None) -> None:
    ctx.consts[name] = value
    if mask is not None and mask.any():
        ctx.masks[name] = mask


# ---------------------------------------------------------------------------------------------- loading


def _load(source: Any, label: str) -> Any:
    onnx = require_onnx()
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.exists():
        raise ModelError(f"{label}: no such ONNX file")
    if not path.is_file():
        raise ModelError(f"{label}: not a file")
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise ModelError(f"{label}: not a readable ONNX model ({type(e).__name__}: {one_line(e)})") from None


def _io(model: Any, label: str) -> tuple[Any, Any]:
    """The one graph input (initializers listed as inputs aside) and the one output."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    for kind, found in (("inputs", inputs), ("outputs", list(g.output))):
        if len(found) != 1:
            names = ", ".join(repr(v.name) for v in found)
            raise ModelError(f"{label}: the ONNX graph has {len(found)} {kind} ({names}); "
                             "the import takes one input and one output")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != 1:  # TensorProto.FLOAT
        raise ModelError(f"{label}: the ONNX input '{inputs[0].name}' is not a float32 tensor "
                         f"(elem_type {tensor.elem_type}); the import takes float32 inputs")
    if len(tensor.shape.dim) < 2:
        raise ModelError(f"{label}: the ONNX input '{inputs[0].name}' has rank {len(tensor.shape.dim)}; "
                         "the import takes (batch, C, ...) inputs")
    return inputs[0], g.output[0]


def _dims(value_info: Any) -> Shape | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)


_SMALL = 4096  # initializers up to this many elements stay values for shape inference's data propagation


def _shape_only_copy(model: Any) -> Any:
    """The model with its large initializers as typed graph inputs: inference needs their shapes, not
    their data (serializing hundreds of MB of weights would cost seconds)."""
    from onnx import GraphProto, ModelProto, helper

    src = model.graph
    g = GraphProto(name=src.name, node=src.node, input=src.input, output=src.output,
                   sparse_initializer=src.sparse_initializer)
    listed = {i.name for i in src.input}
    for t in src.initializer:
        if math.prod(t.dims) <= _SMALL:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    m = ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions)
    m.graph.CopyFrom(g)
    return m


def _pin(dims: Any, input_name: str, given: Sequence[int] | None, label: str) -> int:
    """Fix the input's batch (its static value, else 1) and, when given, its per-sample dims; the batch."""
    if given is not None:
        known = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[1:]]
        if len(given) != len(known) or any(k not in (None, v) for k, v in zip(known, given, strict=False)):
            raise ModelError(f"{label}: the ONNX input '{input_name}' has per-sample shape "
                             f"{tuple(k if k else '?' for k in known)}, not the given {tuple(given)}")
        for d, v in zip(dims[1:], given, strict=True):
            d.dim_value = int(v)
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 1
    dims[0].dim_value = batch
    return int(batch)


def _infer(model: Any, input_name: str, label: str,
           given: Sequence[int] | None = None) -> tuple[dict[str, Shape], int]:
    """Inferred shapes of every tensor with the input pinned (:func:`_pin`), and the batch."""
    onnx = require_onnx()
    m = _shape_only_copy(model)
    g = m.graph
    batch = _pin(next(i for i in g.input if i.name == input_name).type.tensor_type.shape.dim, input_name, given,
                 label)
    del g.value_info[:]
    for out in g.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:
        raise ModelError(f"{label}: ONNX shape inference failed ({type(e).__name__}: {one_line(e)})") from None
    ig = inferred.graph
    shapes = {v.name: s for v in (*ig.value_info, *ig.input, *ig.output) if (s := _dims(v)) is not None}
    shapes.update({t.name: tuple(int(d) for d in t.dims) for t in ig.initializer})
    return shapes, batch


# ---------------------------------------------------------------------------------------------- building


def _new_ctx(model: Any, label: str, shapes: dict[str, Shape], batch: int, output: str) -> Ctx:
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ctx = Ctx(label=label, nodes=list(model.graph.node), shapes=shapes, opset=opset, batch=batch)
    ctx.outputs.add(output)
    for t in model.graph.initializer:
        try:
            ctx.consts[t.name] = np.asarray(numpy_helper.to_array(t))
        except Exception as e:
            raise ModelError(f"{label}: initializer '{t.name}' cannot be read ({one_line(e)})") from None
    for i, node in enumerate(ctx.nodes):
        for name in node.input:
            if name:
                ctx.consumers.setdefault(name, []).append(i)
    return ctx


def _handle(ctx: Ctx, node: Any) -> None:
    present = [n for n in node.input if n]
    if node.domain not in ("", "ai.onnx"):
        raise ctx.unsupported(node, f"an op of domain {node.domain!r}")
    if node.op_type in ("Shape", "Size") and present and present[0] in ctx.env:
        _fold_shape(ctx, node)
    elif node.op_type in FOLD and all(n in ctx.consts for n in present):
        _fold(ctx, node)
    elif node.op_type in OPS:
        OPS[node.op_type](ctx, node)
    else:
        raise ctx.unsupported(node, "no mapping to torch for this op")
    for name in node.output:
        needed = name in ctx.outputs or any(j not in ctx.skip for j in ctx.consumers.get(name, []))
        if needed and name not in ctx.env and name not in ctx.consts:
            raise ctx.error(node, f"output '{name}' was not produced")
    _propagate(ctx)


def _run_node(ctx: Ctx, n: fx.Node, values: dict[fx.Node, Any]) -> Any:
    args, kwargs = fx.node.map_arg((n.args, n.kwargs), values.__getitem__)
    if n.op == "get_attr":
        return getattr(ctx.root, str(n.target))
    if n.op == "call_module":
        return ctx.root.get_submodule(str(n.target)).eval()(*args, **kwargs)
    if n.op == "call_method":
        return getattr(args[0], str(n.target))(*args[1:], **kwargs)
    if n.op == "call_function":
        assert callable(n.target)
        return n.target(*args, **kwargs)
    raise AssertionError(f"FX node {n.format_node()} cannot be run")


def _propagate(ctx: Ctx) -> None:
    """Run the FX nodes emitted since the last call on the zero example (batch ``ctx.batch``), then give each
    ONNX output put meanwhile the shape torch computes: ONNX shape inference loses dims (through Pad with
    computed pads, Transpose, Reshape...), so later handlers see exact static shapes. Where the inference
    has a static shape too, the two must agree."""
    values = ctx.examples
    if values is None:
        ctx.pending.clear()
        return
    n = ctx.ran.next if ctx.ran is not None else next(iter(ctx.graph.nodes))
    while n.op not in ("root", "output"):
        if n not in values:
            where = n.meta.get("onnx_node", ("?", "?"))
            try:
                with torch.no_grad():
                    values[n] = _run_node(ctx, n, values)
            except Exception as e:
                raise ModelError(f"{ctx.label}: ONNX node '{where[0]}' ({where[1]}): the torch mapping fails "
                                 f"({type(e).__name__}: {one_line(e)})") from None
        ctx.ran, n = n, n.next
    for node, name in ctx.pending:
        out = values[ctx.env[name]]
        if not isinstance(out, torch.Tensor):
            continue
        got, expected = tuple(out.shape), ctx.shapes.get(name)
        if expected is not None and None not in expected and got != expected:
            raise ctx.unsupported(node, f"torch computes shape {got}, ONNX {expected}")
        ctx.shapes[name] = got
    ctx.pending.clear()
    for n in [n for n in values if n not in ctx.live and n.op != "get_attr"]:  # read by nothing to come
        del values[n]


def _passed(ctx: Ctx, node: Any) -> None:
    """``node`` is handled (or fused): an example value whose ONNX tensors have no reader left is dropped."""
    for name in node.input:
        left = ctx.reads_left.get(name, 0) - 1
        ctx.reads_left[name] = left
        fx_node = ctx.env.get(name)
        if left == 0 and name not in ctx.outputs and fx_node in ctx.live:
            ctx.live[fx_node] -= 1
            if not ctx.live[fx_node]:
                del ctx.live[fx_node]
                if ctx.examples is not None:
                    ctx.examples.pop(fx_node, None)


def _build(ctx: Ctx, input_name: str, output_name: str, example: torch.Tensor | None) -> None:
    """Every node in order (fused ones are emitted by the node they fuse into), then the output. With an
    ``example`` input every emitted node is run on it as it is emitted (:func:`_propagate`)."""
    ctx.reads_left = {name: len(users) for name, users in ctx.consumers.items()}
    placeholder = ctx.graph.placeholder(sanitize(input_name) or "x")
    ctx.env[input_name] = placeholder
    if example is not None:
        ctx.examples = {placeholder: example}
        ctx.live[placeholder] = 1
    for i, node in enumerate(ctx.nodes):
        if i not in ctx.skip:
            _handle(ctx, node)
        _passed(ctx, node)
    if output_name not in ctx.env:
        why = "is a constant" if output_name in ctx.consts else "is not produced by any node"
        raise ModelError(f"{ctx.label}: the ONNX output '{output_name}' {why}")
    ctx.graph.output(ctx.env[output_name])
    ctx.examples = None


def import_onnx(path_or_modelproto: Any, *, name: str | None = None, label: str | None = None,
                input_shape: Sequence[int] | None = None) -> fx.GraphModule:
    """An ONNX file or ``onnx.ModelProto`` as a ``torch.fx.GraphModule`` of standard ``torch.nn`` modules (eval mode).

    ``name`` is the module's class name (default: the file's stem); ``label`` names the model in
    errors (default: the path); ``input_shape`` (per sample) pins the input's dynamic dims and must
    agree with its static ones. Attributes: ``input_shape`` (per-sample dims when static or pinned,
    else None) and ``source_format`` ("onnx").
    """
    onnx = require_onnx()
    is_proto = isinstance(path_or_modelproto, onnx.ModelProto)
    label = label or ("ONNX model" if is_proto else str(path_or_modelproto))
    model = _load(path_or_modelproto, label)
    inp, out = _io(model, label)
    shapes, batch = _infer(model, inp.name, label, input_shape)
    dims = shapes.get(inp.name) or (None,)
    per_sample = None if None in dims[1:] else tuple(int(d) for d in dims[1:] if d is not None)
    ctx = _new_ctx(model, label, shapes, batch, out.name)
    _build(ctx, inp.name, out.name, None if per_sample is None else torch.zeros(batch, *per_sample))
    stem = None if is_proto else Path(path_or_modelproto).stem
    gm = fx.GraphModule(ctx.root, ctx.graph, class_name=sanitize(name or stem or "") or "OnnxModel")
    gm.eval()
    set_info(gm, input_shape=per_sample, source_format="onnx")
    return gm
