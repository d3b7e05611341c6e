"""The float ONNX graph of a fake-quant model, rebuilt from its integer model.

An :class:`~mixq.engine.model.IntModel` records everything the fake-quant model
computes: each activation quantizer (format and scale), each layer's weight codes,
row formats and per-row scales, its float bias, and the float operations between
(ReLU / Clip, pooling, residual adds, flatten, concat, padding, zero insertion, pixel
shuffle, resizing, lookup-table activations: :mod:`mixq.export.onnx_ops`). :func:`build` writes that
graph with standard ONNX operators and lets the caller decide how activations and
weights are quantized (QONNX ``Quant`` nodes, or ONNX ``QuantizeLinear`` /
``DequantizeLinear`` pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixq.engine.model import IntModel, IntNode
from mixq.errors import MixqError, ModelError
from mixq.export.onnx_ops import MOVE_EMITTERS, clamp_channels
from mixq.names import UniqueNames

OPSET = 13


def onnx_modules() -> tuple[Any, Any, Any]:
    """``(onnx, helper, numpy_helper)``, or a :class:`MixqError` saying how to install onnx."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MixqError("ONNX export needs the onnx package: pip install onnx onnxruntime") from e
    return onnx, helper, numpy_helper


class GraphBuilder:
    """Accumulates nodes, initializers and value infos (every tensor gets a shape)."""

    def __init__(self, batch: int | str) -> None:
        self.onnx, self.helper, self.nh = onnx_modules()
        self.batch = batch
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.infos: list[Any] = []
        self.fresh = UniqueNames().take

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(self.nh.from_array(np.asarray(value), name))
        return name

    def info(self, name: str, shape: Sequence[int], batched: bool = True, elem: int | None = None) -> None:
        dims: list[Any] = ([self.batch] if batched else []) + [int(d) for d in shape]
        etype = self.onnx.TensorProto.FLOAT if elem is None else elem
        self.infos.append(self.helper.make_tensor_value_info(name, etype, dims))

    def node(self, op: str, inputs: Sequence[str], base: str, shape: Sequence[int] | None, batched: bool = True,
             domain: str = "", doc: str = "", elem: int | None = None, **attrs: Any) -> str:
        out = self.fresh(base)
        n = self.helper.make_node(op, list(inputs), [out], name=out, domain=domain or None, **attrs)
        if doc:
            n.doc_string = doc
        self.nodes.append(n)
        if shape is not None:
            self.info(out, shape, batched, elem)
        return out


ActQuant = Callable[[GraphBuilder, str, IntNode], str]
WeightQuant = Callable[[GraphBuilder, IntNode], str]
BiasQuant = Callable[[GraphBuilder, IntNode], str | None]


def build(imodel: IntModel, act: ActQuant, weight: WeightQuant, bias: BiasQuant, *, batch: int | str,
          name: str, opsets: dict[str, int], metadata: dict[str, str]) -> Any:
    """The ONNX ``ModelProto`` of ``imodel``'s fake-quant graph with the given quantizer writers."""
    b = GraphBuilder(batch)
    onnx, helper = b.onnx, b.helper
    inp = b.fresh("input")
    tensors: dict[str, str] = {"input": inp}
    writers = Writers(act, weight, bias, tuple(imodel.input_shape))
    for n in imodel.nodes:
        xs = [tensors[i] for i in n.inputs]
        tensors[n.name] = _emit(b, n, xs, writers)
    out_name = tensors[imodel.output]
    graph = helper.make_graph(
        b.nodes, name,
        [helper.make_tensor_value_info(inp, onnx.TensorProto.FLOAT, [batch, *imodel.input_shape])],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT,
                                       [batch, *imodel.node(imodel.output).shape])],
        initializer=b.inits,
        value_info=[v for v in b.infos if v.name != out_name],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="mixq")
    model.ir_version = 8
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    return model


@dataclass(frozen=True)
class Writers:
    """How the caller writes quantizers, and the network input's per-sample shape."""

    act: ActQuant
    weight: WeightQuant
    bias: BiasQuant
    input_shape: tuple[int, ...]


Emit = Callable[[GraphBuilder, IntNode, list[str], Writers], str]


def _quant(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    x = xs[0]
    if n.op == "quantize" and tuple(n.shape) != tuple(w.input_shape):  # unit dims inserted before quantizing
        x = b.node("Reshape", [x, b.const(f"{n.name}.shape", np.array([-1, *n.shape], dtype=np.int64))],
                   f"{n.name}.reshape", n.shape)
    return w.act(b, x, n)


def _ins(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> list[str]:
    ins = [xs[0], w.weight(b, n)]
    bname = w.bias(b, n)
    return ins if bname is None else [*ins, bname]


def _conv(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    a = n.attrs
    k = list(np.asarray(n.arrays["weight"]).shape[2:])
    pads = [int(a["padding"][0]), int(a["padding"][1])] * 2
    return b.node("Conv", _ins(b, n, xs, w), n.name, n.shape, kernel_shape=k, strides=list(a["stride"]), pads=pads,
                  dilations=list(a["dilation"]), group=int(a["groups"]))


def _linear(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    return b.node("Gemm", _ins(b, n, xs, w), n.name, n.shape, transB=1)


def _clamp(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    lo, hi = n.attrs["lo_real"], n.attrs["hi_real"]
    lo_c, hi_c = n.arrays.get("lo_float"), n.arrays.get("hi_float")
    if lo_c is not None or hi_c is not None:  # per-channel limits: Max / Min (Clip takes scalars only)
        return clamp_channels(b, n, xs[0], lo, hi, lo_c, hi_c)
    if lo == 0.0 and hi is None:
        return b.node("Relu", xs, n.name, n.shape)
    lo_n = b.const(f"{n.name}.min", np.array(lo, dtype=np.float32)) if lo is not None else ""
    hi_n = b.const(f"{n.name}.max", np.array(hi, dtype=np.float32)) if hi is not None else ""
    return b.node("Clip", [xs[0], lo_n, hi_n], n.name, n.shape)


def _maxpool(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    a = n.attrs
    p = [int(a["padding"][0]), int(a["padding"][1])] * 2
    return b.node("MaxPool", xs, n.name, n.shape, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                  pads=p, dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


def _sumpool(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    a = n.attrs
    if a["float_op"] == "global_avgpool":
        c = n.shape[0]
        y = b.node("GlobalAveragePool", xs, n.name, (c, 1, 1) if not a["keepdim"] else n.shape)
    else:
        p = [int(a["padding"][0]), int(a["padding"][1])] * 2
        y = b.node("AveragePool", xs, n.name, n.shape if a["keepdim"] else None, kernel_shape=list(a["kernel"]),
                   strides=list(a["stride"]), pads=p, count_include_pad=int(a["count_include_pad"]),
                   ceil_mode=int(a.get("ceil_mode", False)))
    return y if a["keepdim"] else b.node("Flatten", [y], f"{n.name}.flat", n.shape, axis=1)


EMITTERS: dict[str, Emit] = {
    "quantize": _quant, "requant": _quant, "conv": _conv, "linear": _linear, "clamp": _clamp,
    "maxpool": _maxpool, "sumpool": _sumpool,
    "add": lambda b, n, xs, w: b.node("Add", xs, n.name, n.shape),
    "flatten": lambda b, n, xs, w: b.node("Flatten", xs, n.name, n.shape, axis=1),
    "cat": lambda b, n, xs, w: b.node("Concat", xs, n.name, n.shape, axis=1),
    **MOVE_EMITTERS,
}


def _emit(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    emit = EMITTERS.get(n.op)
    if emit is None:  # pragma: no cover - every op of mixq.engine.model has an emitter
        raise ModelError(f"export: node {n.name!r} ({n.op}) has no ONNX form")
    return emit(b, n, xs, w)


def row_steps(n: IntNode) -> np.ndarray:
    """Per-row weight step ``s_w * 2**-frac`` as float32 (exact: a power-of-two factor on a float32)."""
    from mixq.formats import format_from_dict

    fmts = [format_from_dict(f) for f in n.attrs["formats"]]
    rows = np.asarray(n.arrays["row_format"], dtype=np.int64)
    s = np.asarray(n.arrays["w_scale"], dtype=np.float32)
    return np.ldexp(s, -np.array([fmts[i].frac_bits for i in rows])).astype(np.float32)


def dequantized_weight(n: IntNode) -> np.ndarray:
    """The fake-quant weight in float32, ``fl32(code * step)`` per row, as the fake-quant model has it."""
    codes = np.asarray(n.arrays["weight"], dtype=np.float64)
    step = row_steps(n).astype(np.float64).reshape((-1,) + (1,) * (codes.ndim - 1))
    return (codes * step).astype(np.float32)
