"""QONNX export: the fake-quant model with ``Quant`` / ``BipolarQuant`` nodes (qonnx custom ops).

Activations: one ``Quant(x, scale, 0, bits)`` per activation quantizer (``signed``,
``narrow`` and ``rounding_mode="ROUND"`` — round half to even, clamp — as the
fake-quant model does).

Weights: one quantizer node per row format of the layer, each on a copy of the
weight that holds that format's rows (the other rows zero), summed with ``Add`` when
a layer mixes formats:

* fixed point: ``Quant`` with the format's bits, sign and narrow range, per-row scale;
* binary: ``BipolarQuant`` with the per-row scale (then a row mask when mixed);
* SP2, power of two, ternary (and any format with dyadic levels ``q * 2**-f``): exactly
  a *narrow signed integer* ``Quant`` whose bit width holds the largest ``|q|``
  (``bit_length(max|q|) + 1``; SP2 4-bit: ``q in ±{0,1,2,4,5,6,8}`` -> INT5) at the
  per-row scale ``s_w * 2**-f``. The levels are a subset of that integer range, so the
  node reproduces them exactly; the true format of every row is recorded in the node's
  ``doc_string`` and in the model metadata ``mixq.weight_formats`` (JSON:
  layer -> formats, rows per format, format index per row).

The stored weights are already on their grid (``Quant`` is exact on them). Residual
adds, pooling, ReLU/Clip, padding, resizing and the other data-movement ops are the float
operations of the fake-quant model (:mod:`mixq.export.onnx_ops`); a lookup-table activation
is ``Quant(in) -> float function -> Quant(out, 16-bit)``. The
batch size is fixed (qonnx's executor needs concrete shapes); ``batch=1`` by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mixq.engine.model import IntModel, IntNode
from mixq.export.onnx_graph import OPSET, GraphBuilder, build, dequantized_weight, row_steps
from mixq.formats import FixedPoint, NumberFormat, format_from_dict
from mixq.io import atomic_write_bytes

QONNX_DOMAIN = "qonnx.custom_op.general"


def int_representation(fmt: NumberFormat) -> tuple[int, bool, bool]:
    """``(bits, signed, narrow)`` of the QONNX integer quantizer that holds every level of ``fmt``.

    >>> from mixq.formats import parse_format
    >>> int_representation(parse_format("sp2_4")), int_representation(parse_format("fixed4n"))
    ((5, True, True), (4, True, True))
    >>> int_representation(parse_format("ternary")), int_representation(parse_format("pot3"))
    ((2, True, True), (4, True, True))
    """
    if isinstance(fmt, FixedPoint):
        return fmt.bits, fmt.signed, fmt.narrow
    levels = np.asarray(fmt.int_levels(), dtype=np.int64)
    top = int(np.abs(levels).max())
    signed = bool(levels.min() < 0)
    return top.bit_length() + (1 if signed else 0), signed, signed


def _act(b: GraphBuilder, x: str, n: IntNode) -> str:
    fmt = format_from_dict(n.attrs["fmt"])
    bits, signed, narrow = int_representation(fmt)
    ins = [x, b.const(f"{n.name}.scale", np.array(n.attrs["act_scale"], dtype=np.float32)),
           b.const(f"{n.name}.zeropt", np.array(0.0, dtype=np.float32)),
           b.const(f"{n.name}.bitwidth", np.array(float(bits), dtype=np.float32))]
    return b.node("Quant", ins, n.name, n.shape, domain=QONNX_DOMAIN, doc=f"mixq activation format {fmt}",
                  signed=int(signed), narrow=int(narrow), rounding_mode="ROUND")


def _weight(b: GraphBuilder, n: IntNode) -> str:
    w = dequantized_weight(n)
    rows = np.asarray(n.arrays["row_format"], dtype=np.int64)
    steps = row_steps(n)
    bshape = (-1,) + (1,) * (w.ndim - 1)
    parts = []
    for i, fd in enumerate(n.attrs["formats"]):
        mask = rows == i
        if not mask.any():
            continue
        fmt = format_from_dict(fd)
        wi = np.where(mask.reshape(bshape), w, np.float32(0)).astype(np.float32)
        name = b.const(f"{n.name}.weight.{fmt}", wi)
        if fmt.kind == "binary":
            scale = np.where(mask, np.asarray(n.arrays["w_scale"], dtype=np.float32), 1).reshape(bshape)
            q = b.node("BipolarQuant", [name, b.const(f"{n.name}.wscale.{fmt}", scale.astype(np.float32))],
                       f"{n.name}.wq.{fmt}", w.shape, batched=False, domain=QONNX_DOMAIN,
                       doc=f"mixq weight format {fmt}: {int(mask.sum())} of {len(rows)} rows")
            if not mask.all():
                m = b.const(f"{n.name}.rowmask.{fmt}", mask.astype(np.float32).reshape(bshape))
                q = b.node("Mul", [q, m], f"{n.name}.wq.{fmt}.rows", w.shape, batched=False)
        else:
            bits, signed, narrow = int_representation(fmt)
            scale = np.where(mask, steps, 1).astype(np.float32).reshape(bshape)
            how = "" if isinstance(fmt, FixedPoint) else (
                f" as INT{bits} codes q at scale s*2^-{fmt.frac_bits} (its levels are q*2^-{fmt.frac_bits})")
            q = b.node("Quant", [name, b.const(f"{n.name}.wscale.{fmt}", scale),
                                 b.const(f"{n.name}.wzero.{fmt}", np.array(0.0, dtype=np.float32)),
                                 b.const(f"{n.name}.wbits.{fmt}", np.array(float(bits), dtype=np.float32))],
                       f"{n.name}.wq.{fmt}", w.shape, batched=False, domain=QONNX_DOMAIN,
                       doc=f"mixq weight format {fmt}{how}: {int(mask.sum())} of {len(rows)} rows",
                       signed=int(signed), narrow=int(narrow), rounding_mode="ROUND")
        parts.append(q)
    out = parts[0]
    for k, p in enumerate(parts[1:]):
        out = b.node("Add", [out, p], f"{n.name}.weight_sum{k}", w.shape, batched=False)
    return out


def _bias(b: GraphBuilder, n: IntNode) -> str | None:
    if not n.attrs.get("has_bias", True):
        return None
    return b.const(f"{n.name}.bias", np.asarray(n.arrays["bias_float"], dtype=np.float32))


def weight_formats(imodel: IntModel) -> dict[str, Any]:
    """Layer -> ``{"formats": [...], "rows": {label: count}, "row_format": [...]}`` (the metadata)."""
    out: dict[str, Any] = {}
    for n in imodel.compute_nodes():
        rows = np.asarray(n.arrays["row_format"], dtype=np.int64)
        fmts = [str(format_from_dict(f)) for f in n.attrs["formats"]]
        out[n.name] = {"formats": list(n.attrs["formats"]),
                       "rows": {f: int((rows == i).sum()) for i, f in enumerate(fmts)},
                       "row_format": rows.tolist()}
    return out


def to_qonnx(imodel: IntModel, batch: int = 1) -> Any:
    """The QONNX ``ModelProto`` of the fake-quant model behind ``imodel``."""
    meta = {"mixq.weight_formats": json.dumps(weight_formats(imodel)),
            "mixq.representation": "sp2/pot/ternary rows: narrow signed Quant of their integer levels q at "
                                   "scale s*2^-frac_bits; mixed rows: one quantizer per format, summed"}
    return build(imodel, _act, _weight, _bias, batch=batch, name="mixq_qonnx",
                 opsets={"": OPSET, QONNX_DOMAIN: 1}, metadata=meta)


def save_qonnx(imodel: IntModel, path: str | Path, batch: int = 1) -> Path:
    """Write the QONNX model to ``path`` (atomically)."""
    model = to_qonnx(imodel, batch)
    return atomic_write_bytes(path, model.SerializeToString())
