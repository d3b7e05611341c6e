"""ONNX QDQ export for 8-bit activations: ``QuantizeLinear`` / ``DequantizeLinear`` pairs.

Runs in any ONNX runtime (onnxruntime fuses the pairs into integer kernels).

* activations: ``QuantizeLinear(x, s, 0)`` (uint8, or int8 for signed inputs; round half
  to even and saturation — the fake-quant rounding) then ``DequantizeLinear``. Only
  8-bit, full-range fixed-point activations have a QDQ form;
* weights: int8 codes with a per-row scale ``s_w * 2**-frac`` (``axis=0``). Any row
  format whose integer levels fit in int8 is exact this way: fixed point up to 8 bits,
  SP2 / power-of-two codes (``q * 2**-frac``), binary, ternary;
* lookup-table activations: ``QuantizeLinear`` / ``DequantizeLinear`` (int8) on their input,
  the float function, and their 16-bit output quantizer as the float ops ``Div``, ``Round``
  (ties to even), ``Clip``, ``Mul`` — int16 Q/DQ needs opset 21; these are the fake-quant
  model's own IEEE float32 operations;
* bias: int32 at the product scale ``s_act * s_w * 2**-frac`` (``DequantizeLinear``), or
  float32 as in the fake-quant model (``int_bias=False``).

Other formats raise :class:`~mixq.errors.ModelError` naming the layer; use QONNX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mixq.engine.model import IntModel, IntNode
from mixq.errors import ModelError
from mixq.export.onnx_graph import OPSET, GraphBuilder, build, row_steps
from mixq.formats import FixedPoint, format_from_dict
from mixq.io import atomic_write_bytes


def _fake_quant_ops(b: GraphBuilder, x: str, n: IntNode, fmt: FixedPoint) -> str:
    """``round(x / s).clip(qmin, qmax) * s`` in float32: the fake-quant rounding op for op (ties to even)."""
    s = b.const(f"{n.name}.scale", np.array(n.attrs["act_scale"], dtype=np.float32))
    y = b.node("Div", [x, s], f"{n.name}.div", n.shape)
    y = b.node("Round", [y], f"{n.name}.round", n.shape)
    y = b.node("Clip", [y, b.const(f"{n.name}.qmin", np.array(fmt.qmin, dtype=np.float32)),
                        b.const(f"{n.name}.qmax", np.array(fmt.qmax, dtype=np.float32))], f"{n.name}.clip", n.shape)
    return b.node("Mul", [y, s], n.name, n.shape)


def _act(b: GraphBuilder, x: str, n: IntNode) -> str:
    fmt = format_from_dict(n.attrs["fmt"])
    if n.op == "lut" and isinstance(fmt, FixedPoint) and fmt.bits > 8:
        return _fake_quant_ops(b, x, n, fmt)  # a lookup table's 16-bit output grid: no int16 Q/DQ in opset 13
    if not isinstance(fmt, FixedPoint) or fmt.bits != 8 or fmt.narrow:
        raise ModelError(f"QDQ export: layer {n.source or n.name}: activation format {fmt} is not 8-bit "
                         "full-range fixed point; use --format qonnx")
    onnx = b.onnx
    zdt, elem = (np.int8, onnx.TensorProto.INT8) if fmt.signed else (np.uint8, onnx.TensorProto.UINT8)
    s = b.const(f"{n.name}.scale", np.array(n.attrs["act_scale"], dtype=np.float32))
    z = b.const(f"{n.name}.zero_point", np.array(0, dtype=zdt))
    q = b.node("QuantizeLinear", [x, s, z], f"{n.name}.q", n.shape, elem=elem)
    return b.node("DequantizeLinear", [q, s, z], n.name, n.shape)


def _weight(b: GraphBuilder, n: IntNode) -> str:
    codes = np.asarray(n.arrays["weight"], dtype=np.int64)
    if codes.size and (codes.min() < -128 or codes.max() > 127):
        fmts = ", ".join(str(format_from_dict(f)) for f in n.attrs["formats"])
        raise ModelError(f"QDQ export: layer {n.name!r} ({n.op}): weight codes of {fmts} do not fit int8; "
                         "use --format qonnx")
    rows = codes.shape[0]
    w = b.const(f"{n.name}.weight_q", codes.astype(np.int8))
    s = b.const(f"{n.name}.weight_scale", row_steps(n))
    z = b.const(f"{n.name}.weight_zero_point", np.zeros(rows, dtype=np.int8))
    return b.node("DequantizeLinear", [w, s, z], f"{n.name}.weight", codes.shape, batched=False, axis=0)


def _bias(b: GraphBuilder, n: IntNode, imodel: IntModel, quantized: bool) -> str | None:
    if not n.attrs.get("has_bias", True):
        return None
    if not quantized:
        return b.const(f"{n.name}.bias", np.asarray(n.arrays["bias_float"], dtype=np.float32))
    s_act = float(imodel.input_quantizer(n.name).attrs["act_scale"])
    step = (s_act * row_steps(n).astype(np.float64)).astype(np.float32)
    q = np.rint(np.asarray(n.arrays["bias_float"], dtype=np.float64) / step.astype(np.float64))
    if np.abs(q).max(initial=0) >= 2**31:
        raise ModelError(f"QDQ export: layer {n.name!r}: bias does not fit int32 at the product scale")
    rows = len(step)
    bq = b.const(f"{n.name}.bias_q", q.astype(np.int32))
    s = b.const(f"{n.name}.bias_scale", step)
    z = b.const(f"{n.name}.bias_zero_point", np.zeros(rows, dtype=np.int32))
    return b.node("DequantizeLinear", [bq, s, z], f"{n.name}.bias", (rows,), batched=False, axis=0)


def to_qdq(imodel: IntModel, batch: int | str = "N", int_bias: bool = True) -> Any:
    """The ONNX QDQ ``ModelProto`` of the fake-quant model behind ``imodel`` (symbolic batch by default).

    ``int_bias=False`` keeps the bias in float32, as the fake-quant model has it (then
    runtimes run the convolutions in float instead of fusing them into integer kernels).
    """
    return build(imodel, _act, _weight, lambda b, n: _bias(b, n, imodel, int_bias), batch=batch, name="mixq_qdq",
                 opsets={"": OPSET}, metadata={"mixq.export": "qdq", "mixq.bias": "int32" if int_bias else "float"})


def save_qdq(imodel: IntModel, path: str | Path, batch: int | str = "N", int_bias: bool = True) -> Path:
    """Write the QDQ model to ``path`` (atomically)."""
    return atomic_write_bytes(path, to_qdq(imodel, batch, int_bias).SerializeToString())
