"""Quantized residual streams: an activation quantizer on each residual add's output.

Without it a residual stream stays an exact integer on the accumulator grid from add to add (the fake-quant
model keeps it in float; only the next layer's own input quantizer rounds it), so the hardware stores it — the
skip buffer of the next add — as wide as the sums: 39 to 40 bits on a ResNet-20, against the 8 of its
activations. FINN and Brevitas put a quantizer on the stream for that reason; :func:`quantize_residuals` does
the same from the plan's ``residual_bits``:

* each add of two tensors computed by the model (not a parameter or a constant) is a residual join;
* its output and each of its operands (the skip the add waits for, the branch) get a quantizer, as FINN's adds
  read and write activation codes: a value goes through one quantizer however many adds and layers read it;
* a quantizer sits after the ReLU / ReLU6 (or a ``Hardtanh`` from 0) that alone reads the value, unsigned, else
  right at the value, signed unless the value is itself such a ReLU's output;
* the quantizers are :class:`~mixq.nn.QAct` modules of one ``ModuleDict``, ``mixq_residuals``, keyed by the FX
  node they follow (``add_3``, ``layer1_0_relu_1``): the trace is deterministic, so a model rebuilt from its
  plan (an artifact read back) has the same names and takes the same state dict. They are calibrated with the
  layers' input quantizers (they are ``QAct``\\ s of the model).

A layer reading a stream has its own input quantizer; calibrated on the same tensor with the same format and
observer it gets the same scale, and the integer engine then reads the stream's codes as they are (no
requantizer: :func:`mixq.engine.context.quant_input`).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import fx, nn

from mixq.graph.trace import NodeOp, node_ops, tensor_args, trace
from mixq.nn import QAct

ATTR = "mixq_residuals"
_UNSIGNED_AFTER = ("relu", "relu6")


def _clips_at_zero(op: NodeOp) -> bool:
    """A ReLU, ReLU6 or a Hardtanh whose lower limit is 0: its output is never negative."""
    if op.kind in _UNSIGNED_AFTER:
        return True
    return op.kind == "hardtanh" and op.module is not None and float(getattr(op.module, "min_val", -1.0)) >= 0.0


def _point(node: fx.Node, ops: dict[fx.Node, NodeOp]) -> tuple[fx.Node, bool]:
    """Where ``node``'s value is quantized: after the ReLU that alone reads it (unsigned), else at ``node``."""
    users = list(node.users)
    nxt = ops.get(users[0]) if len(users) == 1 else None
    if nxt is not None and _clips_at_zero(nxt):
        return users[0], False
    op = ops.get(node)
    return node, not (op is not None and _clips_at_zero(op))


def residual_points(gm: fx.GraphModule) -> dict[fx.Node, bool]:
    """The nodes whose outputs get a stream quantizer, in graph order, each with ``signed``: every residual add's
    output and each of its operands (its skip, its branch) that is not another add's quantized output."""
    ops = node_ops(gm)
    adds = [n for n, op in ops.items() if op.kind == "add"
            and len(ins := tensor_args(n)) == 2 and not any(a.op == "get_attr" for a in ins)]
    points = dict(_point(n, ops) for n in adds)
    for n in adds:
        for a in tensor_args(n):
            if a not in points:
                node, signed = _point(a, ops)
                points.setdefault(node, signed)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return dict(sorted(points.items(), key=lambda kv: order[kv[0]]))


def quantize_residuals(model: nn.Module, bits: int, observer: str = "minmax") -> fx.GraphModule:
    """``model`` (traced; its modules shared) with a ``bits``-bit :class:`QAct` on every residual stream."""
    gm = trace(model, stage="residual_bits")
    points = residual_points(gm)
    holder = nn.ModuleDict({node.name: QAct.fixed(bits, signed, observer) for node, signed in points.items()})
    gm.add_module(ATTR, holder)
    for node in points:
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(f"{ATTR}.{node.name}", (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)  # type: ignore[misc]
    gm.graph.lint()
    gm.recompile()
    return gm


def residual_quantizers(model: nn.Module) -> dict[str, QAct]:
    """The residual-stream quantizers of a model :func:`quantize_residuals` made, by key (none: empty)."""
    holder = getattr(model, ATTR, None)
    return {k: m for k, m in holder.items() if isinstance(m, QAct)} if isinstance(holder, nn.ModuleDict) else {}


def stream_readers(qmodel: nn.Module) -> Iterator[tuple[QAct, list[QAct]]]:
    """Each residual-stream quantizer of ``qmodel`` with the input quantizers of the layers reading it that have
    its format (calibrated), in graph order."""
    streams = residual_quantizers(qmodel)
    if not streams:
        return
    gm = trace(qmodel, stage="residual_bits")
    mods = dict(gm.named_modules())
    for node in gm.graph.nodes:
        q = streams.get(str(node.target).removeprefix(f"{ATTR}.")) if node.op == "call_module" else None
        if q is None or mods[str(node.target)] is not q:
            continue
        yield q, [iq for u in node.users if u.op == "call_module"
                  and isinstance(iq := getattr(mods[str(u.target)], "input_quant", None), QAct)
                  and iq.fmt == q.fmt and iq.calibrated]


def tie_residual_scales(qmodel: nn.Module) -> int:
    """Give each residual-stream quantizer the scale of the first layer reading it whose input quantizer has
    the stream's format, and every such reader that scale: the readers then take the stream's codes as they are
    (the integer engine adds no requantizer). A stage that tuned the readers' input ranges on their outputs
    (``act_ranges="output"``) so sets the stream's too. An add's two operands keep their own scales: the engine
    brings them to a common grid 2**8 finer than the coarser (``add_guard_bits``), exactly as the hardware-faithful
    model does. Tying the branch's scale to the skip's by a power of two (an add without rescaling) cost
    MobileNetV2 1.2 points more at W8A8 minmax (89.1% against 90.3% with 8-bit streams) and was taken out. In
    place; returns the number of streams tied to their readers."""
    tied = 0
    for q, readers in stream_readers(qmodel):
        if not readers:
            continue
        scale = readers[0].scale.detach().clone()
        for a in (q, *readers):
            a.scale = scale.clone()
        tied += 1
    return tied
