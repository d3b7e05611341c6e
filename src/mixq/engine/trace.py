"""The integer engine's view of the one graph front end (:mod:`mixq.graph.trace`).

The quantized model is traced by the front end's tracer (``QConv2d``, ``QLinear``, ``QAct``,
``QLutAct``, ``ZeroInsert`` and every module of its op table are leaves) and each node classified
by its one op table. :func:`classify` keeps the kinds the engine's builders run
(:data:`mixq.engine.convert.BUILDERS`) and refuses every other node with a
:class:`~mixq.errors.ModelError` naming the layer and its type: a compute layer left in float, an
activation that quantization did not wrap in a lookup table, an op no stage supports. A BatchNorm the
front end could not fold runs as an integer affine (:mod:`mixq.engine.convert_ops`).
Node names are the front end's: a module call by the module's qualified name (``name:1``,
``name:2`` for its later calls), a function call by its FX node name (``add``, ``flatten``).
"""

from __future__ import annotations

import torch
from torch import fx

from mixq.errors import ModelError
from mixq.graph.trace import NodeOp, fn_args, node_ops, shape_of, tensor_args, unsupported_why
from mixq.graph.trace import trace as _trace

OpInfo = NodeOp
__all__ = ["OpInfo", "REFUSED", "classify", "fn_args", "shape_of", "tensor_args", "trace"]

# Front-end kinds the integer engine does not run, with what to do about them.
REFUSED: dict[str, str] = {
    "conv": " (a compute layer left in float: the plan must quantize its weights and input)",
    "linear": " (a compute layer left in float: the plan must quantize its weights and input)",
    "float_compute": " (a compute layer mixq does not quantize)",
    "softmax": " (not elementwise: no lookup table computes it)",
    "unsupported": "",
    "getitem": " (indexing: it takes x[:, None] and contiguous ranges of non-batch dims, x[:, a:b], "
               "x[:, :, :-1, :-1])",
    "constant": "",
}


def trace(model: torch.nn.Module, example: torch.Tensor | None) -> fx.GraphModule:
    """The front end's graph of ``model``, with every node's shape on ``example`` (if given)."""
    return _trace(model, example, stage="integer engine")


def classify(gm: fx.GraphModule) -> dict[fx.Node, OpInfo]:
    """The front end's kind of every ``call_*`` node; :class:`ModelError` naming the first one the engine
    does not run."""
    out: dict[fx.Node, OpInfo] = {}
    for node, op in node_ops(gm).items():
        if op.kind in REFUSED:
            what = (op.type if op.module is not None else "tensor constant" if op.kind == "constant"
                    else f"function {op.type}" if node.op == "call_function" else f"method {op.type}")
            why = REFUSED[op.kind] or unsupported_why(op.type)
            raise ModelError(f"layer {op.name!r} ({what}): not supported by the integer engine{why}")
        out[node] = op
    return out
