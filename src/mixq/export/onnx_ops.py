"""ONNX forms of the data-movement, interpolation, reduction, product and lookup-table ops of an integer model.

Each is written as the float operation of the fake-quant model, so a QONNX / QDQ export computes
what the fake-quant model computes:

* ``reshape``: ``Reshape``; ``transpose``: ``Transpose`` (the batch axis first); ``slice``: ``Slice``;
  ``pad``: ``Pad`` (constant 0); ``pixel_shuffle``: ``DepthToSpace`` (mode CRD, torch's channel order);
* ``zero_insert``: pure data movement, exactly — ``Unsqueeze`` to ``(N, C, H, 1, W, 1)``, ``Pad``
  to ``(N, C, H, sh, W, sw)``, ``Reshape`` to ``(N, C, H*sh, W*sw)``, ``Slice`` the trailing zeros
  off, ``Pad`` the ``extra`` rows / columns;
* ``upsample`` (nearest, integer factors): ``Resize`` nearest with ``asymmetric`` coordinates and
  ``floor`` (``x_in = floor(x_out / k)``, torch's rule for integer factors);
* ``interp`` (bilinear): ``Resize`` linear, ``pytorch_half_pixel`` (``align_corners=False``, with
  torch's clamp of negative source coordinates) or ``align_corners``; torch's scale factors when it
  used them, else the output size (from the input's shape, so the batch can stay symbolic). The
  float weights are torch's up to float rounding (onnxruntime's and torch's coordinate arithmetic
  differ in the last bits), well inside the tolerance of the export checks;
* ``reduce``: ``ReduceMean`` / ``ReduceMax`` over axis 1 (``axes`` attribute, opset 13) with the node's
  ``keepdims``; ``mul``: ``Mul`` of the two tensors (ONNX broadcasts size-1 dims as torch does), or by the
  float32 scalar;
* ``affine`` (a BatchNorm left unfolded): ``Mul`` by ``a_c`` then ``Add`` of ``b_c`` (per-channel float32
  constants shaped ``(C, 1, ..)``, ``y = a_c * x + b_c`` of the BatchNorm in eval semantics);
* ``clamp`` with per-channel limits: ``Relu`` / ``Max`` then ``Min`` with ``(C, 1, 1)`` constants
  (``Clip`` takes scalars only);
* ``lut``: the activation's float function (:data:`FUNCTIONS`, opset 13 operators: SiLU as
  ``x * Sigmoid(x)``, Hardswish as ``x * HardSigmoid(x)``, GELU through ``Erf`` or ``Tanh``, Mish
  as ``x * Tanh(Softplus(x))``) between the quantizer writer's input and output quantizers. The
  runtime evaluates the function itself, not the table: a value whose output lands within float
  rounding of a tie of the 16-bit output grid may round the other way (1 step of 2**-15 of the
  output range), which the next quantizer almost always absorbs — not bit-exact at ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mixq.engine.model import IntNode
from mixq.errors import ModelError

if TYPE_CHECKING:
    from mixq.export.onnx_graph import GraphBuilder, Writers


def _i64(b: GraphBuilder, base: str, values: list[int]) -> str:
    return b.const(base, np.array(values, dtype=np.int64))


def _f32(b: GraphBuilder, base: str, value: Any) -> str:
    return b.const(base, np.asarray(value, dtype=np.float32))


def clamp_channels(b: GraphBuilder, n: IntNode, x: str, lo: float | None, hi: float | None,
                   lo_c: np.ndarray | None, hi_c: np.ndarray | None) -> str:
    """``min(max(x, lo), hi)`` with scalar or per-channel limits (``None``: unbounded)."""
    y = x
    if lo_c is not None:
        y = b.node("Max", [y, _f32(b, f"{n.name}.min", lo_c)], f"{n.name}.max", n.shape)
    elif lo == 0.0:
        y = b.node("Relu", [y], f"{n.name}.relu", n.shape)
    elif lo is not None:
        y = b.node("Max", [y, _f32(b, f"{n.name}.min", lo)], f"{n.name}.max", n.shape)
    if hi_c is not None:
        return b.node("Min", [y, _f32(b, f"{n.name}.maxval", hi_c)], n.name, n.shape)
    if hi is not None:
        return b.node("Min", [y, _f32(b, f"{n.name}.maxval", hi)], n.name, n.shape)
    return b.node("Identity", [y], n.name, n.shape)


def _reshape(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    return b.node("Reshape", [xs[0], _i64(b, f"{n.name}.shape", [-1, *n.shape])], n.name, n.shape)


def _pad(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    left, right, top, bottom = (int(p) for p in n.attrs["pads"])
    front, back = (int(p) for p in n.attrs.get("channel_pads", (0, 0)))
    return b.node("Pad", [xs[0], _i64(b, f"{n.name}.pads", [0, front, top, left, 0, back, bottom, right])], n.name,
                  n.shape)


def _zero_insert(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    (sh, sw), (eh, ew) = n.attrs["stride"], n.attrs["extra"]
    c, oh, ow = n.shape
    h, wd = (oh - 1 - eh) // sh + 1, (ow - 1 - ew) // sw + 1
    y = b.node("Unsqueeze", [xs[0], _i64(b, f"{n.name}.axes", [3, 5])], f"{n.name}.unsq", (c, h, 1, wd, 1))
    y = b.node("Pad", [y, _i64(b, f"{n.name}.spread", [0] * 6 + [0, 0, 0, sh - 1, 0, sw - 1])],
               f"{n.name}.spread", (c, h, sh, wd, sw))
    y = b.node("Reshape", [y, _i64(b, f"{n.name}.grid", [-1, c, h * sh, wd * sw])], f"{n.name}.grid",
               (c, h * sh, wd * sw))
    hs, ws = (h - 1) * sh + 1, (wd - 1) * sw + 1
    y = b.node("Slice", [y, _i64(b, f"{n.name}.starts", [0, 0]), _i64(b, f"{n.name}.ends", [hs, ws]),
                         _i64(b, f"{n.name}.slice_axes", [2, 3])], f"{n.name}.slice", (c, hs, ws))
    return b.node("Pad", [y, _i64(b, f"{n.name}.extra", [0, 0, 0, 0, 0, 0, eh, ew])], n.name, n.shape)


def _transpose(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    return b.node("Transpose", xs, n.name, n.shape, perm=[0, *(int(p) + 1 for p in n.attrs["perm"])])


def _slice(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    a = n.attrs
    starts, ends = _i64(b, f"{n.name}.starts", [int(a["start"])]), _i64(b, f"{n.name}.ends", [int(a["stop"])])
    return b.node("Slice", [xs[0], starts, ends, _i64(b, f"{n.name}.axes", [int(a["dim"]) + 1])], n.name, n.shape)


def _gather(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    idx = _i64(b, f"{n.name}.index", [int(i) for i in n.attrs["index"]])
    return b.node("Gather", [xs[0], idx], n.name, n.shape, axis=int(n.attrs["dim"]) + 1)


def _zeros(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    return b.node("Mul", [xs[0], _f32(b, f"{n.name}.zero", 0.0)], n.name, n.shape)


def _pixel_shuffle(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    return b.node("DepthToSpace", xs, n.name, n.shape, blocksize=int(n.attrs["factor"]), mode="CRD")


def _upsample(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    kh, kw = (float(k) for k in n.attrs["scale"])
    return b.node("Resize", [xs[0], "", _f32(b, f"{n.name}.scales", [1.0, 1.0, kh, kw])], n.name, n.shape,
                  mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _interp(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    a = n.attrs
    coord = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
    sf = a.get("scale_factor")
    if sf is not None and not a["align_corners"]:
        ins = [xs[0], "", _f32(b, f"{n.name}.scales", [1.0, 1.0, *sf])]
    else:  # the output size, with the batch and channels of the input
        shape = b.node("Shape", xs, f"{n.name}.in_shape", (4,), batched=False, elem=b.onnx.TensorProto.INT64)
        nc = b.node("Slice", [shape, _i64(b, f"{n.name}.s0", [0]), _i64(b, f"{n.name}.s1", [2])], f"{n.name}.nc",
                    (2,), batched=False, elem=b.onnx.TensorProto.INT64)
        sizes = b.node("Concat", [nc, _i64(b, f"{n.name}.hw", [int(v) for v in a["size"]])], f"{n.name}.sizes",
                       (4,), batched=False, elem=b.onnx.TensorProto.INT64, axis=0)
        ins = [xs[0], "", "", sizes]
    return b.node("Resize", ins, n.name, n.shape, mode="linear", coordinate_transformation_mode=coord)


_REDUCE_OPS = {"mean": "ReduceMean", "amax": "ReduceMax"}


def _reduce(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    op = _REDUCE_OPS.get(str(n.attrs["float_op"]))
    if op is None:  # pragma: no cover - the engine builds reductions of these ops only
        raise ModelError(f"export: layer {n.name!r}: no ONNX form of the reduction {n.attrs['float_op']!r}")
    return b.node(op, xs, n.name, n.shape, axes=[int(n.attrs["dim"])], keepdims=int(bool(n.attrs["keepdim"])))


def _affine(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    """A BatchNorm as the float model computes it: ``x * a_c + b_c`` with per-channel constants."""
    y = b.node("Mul", [xs[0], _f32(b, f"{n.name}.scale", n.arrays["scale_float"])], f"{n.name}.mul", n.shape)
    return b.node("Add", [y, _f32(b, f"{n.name}.shift", n.arrays["shift_float"])], n.name, n.shape)


def _mul(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    c = n.attrs.get("const")
    ins = xs if c is None else [xs[0], _f32(b, f"{n.name}.const", c)]
    return b.node("Mul", ins, n.name, n.shape)


# ----------------------------------------------------------------------------- lookup-table activations

FnEmit = Callable[["GraphBuilder", str, str, IntNode], str]


def _unary(op: str, **attrs: Any) -> FnEmit:
    return lambda b, x, base, n: b.node(op, [x], base, n.shape, **attrs)


def _times(inner: FnEmit) -> FnEmit:
    """``x * inner(x)``."""
    return lambda b, x, base, n: b.node("Mul", [x, inner(b, x, f"{base}.gate", n)], base, n.shape)


def _gelu(b: GraphBuilder, x: str, base: str, n: IntNode) -> str:
    if n.attrs["params"].get("approximate", "none") == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = b.node("Mul", [b.node("Mul", [x, x], f"{base}.x2", n.shape), x], f"{base}.x3", n.shape)
        inner = b.node("Add", [x, b.node("Mul", [x3, _f32(b, f"{base}.c", 0.044715)], f"{base}.cx3", n.shape)],
                       f"{base}.inner", n.shape)
        t = b.node("Tanh", [b.node("Mul", [inner, _f32(b, f"{base}.k", math.sqrt(2 / math.pi))], f"{base}.kin",
                                   n.shape)], f"{base}.tanh", n.shape)
    else:  # x * 0.5 * (1 + erf(x / sqrt(2)))
        t = b.node("Erf", [b.node("Mul", [x, _f32(b, f"{base}.r2", math.sqrt(0.5))], f"{base}.xr2", n.shape)],
                   f"{base}.erf", n.shape)
    one = b.node("Add", [t, _f32(b, f"{base}.one", 1.0)], f"{base}.onep", n.shape)
    half = b.node("Mul", [x, _f32(b, f"{base}.half", 0.5)], f"{base}.halfx", n.shape)
    return b.node("Mul", [half, one], base, n.shape)


def _mish_gate(b: GraphBuilder, x: str, base: str, n: IntNode) -> str:
    return b.node("Tanh", [b.node("Softplus", [x], f"{base}.softplus", n.shape)], base, n.shape)


def _param(key: str, onnx_name: str, op: str) -> FnEmit:
    def emit(b: GraphBuilder, x: str, base: str, n: IntNode) -> str:
        attrs: dict[str, Any] = {onnx_name: float(n.attrs["params"][key])}
        return b.node(op, [x], base, n.shape, **attrs)

    return emit


_HARDSIGMOID = _unary("HardSigmoid", alpha=1.0 / 6.0, beta=0.5)
FUNCTIONS: dict[str, FnEmit] = {
    "sigmoid": _unary("Sigmoid"), "tanh": _unary("Tanh"), "hardsigmoid": _HARDSIGMOID,
    "hardswish": _times(_HARDSIGMOID), "silu": _times(_unary("Sigmoid")), "gelu": _gelu,
    "elu": _param("alpha", "alpha", "Elu"), "leaky_relu": _param("negative_slope", "alpha", "LeakyRelu"),
    "mish": _times(_mish_gate),
}


def _lut(b: GraphBuilder, n: IntNode, xs: list[str], w: Writers) -> str:
    fn = FUNCTIONS.get(str(n.attrs["fn"]))
    if fn is None:
        raise ModelError(f"export: layer {n.name!r}: no ONNX form of the activation {n.attrs['fn']!r}")
    y = fn(b, xs[0], f"{n.name}.f", n)
    return w.act(b, y, n)  # the output quantizer (the node's fmt / act_scale)


MOVE_EMITTERS: dict[str, Callable[[GraphBuilder, IntNode, list[str], Writers], str]] = {
    "reshape": _reshape, "transpose": _transpose, "slice": _slice, "zeros": _zeros, "gather": _gather, "pad": _pad,
    "zero_insert": _zero_insert,
    "pixel_shuffle": _pixel_shuffle, "upsample": _upsample, "interp": _interp, "lut": _lut, "reduce": _reduce,
    "mul": _mul, "affine": _affine,
}
