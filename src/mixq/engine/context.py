"""What the converter (:mod:`mixq.engine.convert`) knows while it walks the graph, and the input
quantizer every builder shares: ``quantize`` for the float network input, ``requant`` otherwise."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from torch import fx

from mixq.engine.arith import INT64_LIMIT, dyadic_array, signed_bits
from mixq.engine.model import IntNode
from mixq.engine.trace import OpInfo, tensor_args
from mixq.errors import ModelError
from mixq.formats import FixedPoint
from mixq.nn import QAct

if TYPE_CHECKING:
    from mixq.engine.convert import EngineConfig


@dataclass
class Val:
    """A tensor as the converter sees it: its producer, grid, bound and per-sample shape.

    ``is_float`` marks the float network input (``node == "input"``), possibly reshaped by
    shape-only ops: ``shape`` is then the shape its first quantizer sees. Data movement on it (zero
    padding, zero insertion, pixel shuffle, nearest upsampling, reshapes after those) is exact on the
    codes as on the floats, because every activation format quantizes 0 to 0 and quantization is
    elementwise: it is kept as ``moves`` (IntNode templates) and replayed on the codes right after the
    ``quantize`` node, which then sees ``base_shape``.
    """

    node: str
    is_float: bool
    scale: np.ndarray
    bound: int
    shape: tuple[int, ...]
    moves: tuple[IntNode, ...] = ()
    base_shape: tuple[int, ...] | None = None


@dataclass
class Ctx:
    gm: fx.GraphModule
    cfg: EngineConfig
    env: dict[fx.Node, Val | None] = field(default_factory=dict)
    nodes: list[IntNode] = field(default_factory=list)
    quant_cache: dict[tuple[str, tuple[int, ...], str, float, tuple[str, ...]], Val] = field(default_factory=dict)

    def add(self, node: IntNode) -> Val:
        names = {n.name for n in self.nodes}
        if node.name in names:
            k = 1
            while f"{node.name}#{k}" in names:
                k += 1
            node = IntNode(f"{node.name}#{k}", node.op, node.inputs, node.shape, node.scale, node.bound,
                           node.attrs, node.arrays, node.source)
        self.nodes.append(node)
        return Val(node.name, False, node.scale, node.bound, node.shape)

    def defer(self, v: Val, node: IntNode) -> Val:
        """Data movement ``node`` on the float input ``v``: replayed on the codes once it is quantized."""
        return Val(v.node, True, v.scale, v.bound, node.shape, (*v.moves, node),
                   v.base_shape if v.base_shape is not None else v.shape)

    def arg(self, node: fx.Node, info: OpInfo) -> Val:
        ins = tensor_args(node)
        if not ins:
            raise ModelError(f"layer {info.name!r} ({info.type}): no tensor input")
        v = self.env.get(ins[0])
        if v is None:
            raise ModelError(f"layer {info.name!r} ({info.type}): its input is not a tensor the engine tracks")
        return v

    def int_arg(self, node: fx.Node, info: OpInfo) -> Val:
        v = self.arg(node, info)
        if v.is_float:
            raise ModelError(f"{where(info)}: applied to the float network input; "
                             "the integer engine needs a quantizer first")
        return v

    def int_operands(self, ins: list[fx.Node], info: OpInfo, what: str) -> list[Val]:
        """The integer tensors ``ins`` (of an add, a product ...); one naming ``what`` it was otherwise."""
        vals = [self.env.get(i) for i in ins]
        if any(v is None or v.is_float for v in vals):
            raise ModelError(f"{where(info)}: an operand is not an integer tensor ({what})")
        return [v for v in vals if v is not None]


def where(info: OpInfo) -> str:
    """How messages name a layer: ``layer 'name' (type)``."""
    return f"layer {info.name!r} ({info.type})"


def dyadic_unique(ratios: np.ndarray, mult_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~mixq.engine.arith.dyadic_array` computed once per distinct ratio (per-position grids)."""
    r = np.asarray(ratios, dtype=np.float64)
    uniq, inv = np.unique(r.reshape(-1), return_inverse=True)
    m, n = dyadic_array(uniq, mult_bits)
    return m[inv].reshape(r.shape), n[inv].reshape(r.shape)


def capped(grid: np.ndarray, bound_of: Callable[[np.ndarray], int], bits: int) -> np.ndarray:
    """``grid``, or ``grid * 2**k`` with the smallest ``k`` for which the output bound ``bound_of(grid)`` fits a
    signed ``bits``-bit register (a sum that would otherwise widen without end along a residual stream)."""
    g = np.asarray(grid, dtype=np.float64)
    bound = bound_of(g)
    while signed_bits(bound) > bits:
        g = np.ldexp(g, max(1, signed_bits(bound) - bits))
        bound = bound_of(g)
    return g


def same_codes(ctx: Ctx, v: Val, fmt: FixedPoint, s: float) -> bool:
    """``v`` is already this quantizer's codes: a quantizer's output (``quantize`` / ``requant``) of the same code
    range on the one grid ``s`` (a residual stream's quantizer read by a layer whose input quantizer has its scale:
    requantizing would be the identity)."""
    if v.moves or np.ndim(v.scale) != 0 or float(v.scale) != s:
        return False
    src = next((n for n in reversed(ctx.nodes) if n.name == v.node), None)
    return src is not None and src.op in ("quantize", "requant") and \
        (src.attrs.get("qmin"), src.attrs.get("qmax")) == (fmt.qmin, fmt.qmax)


def quant_input(ctx: Ctx, v: Val, qact: QAct | None, name: str, owner: OpInfo) -> Val:
    """The codes a layer's input quantizer produces from ``v`` (``quantize`` or ``requant``; ``v`` itself where it
    already is those codes: :func:`same_codes`)."""
    at = where(owner)
    if qact is None:
        raise ModelError(f"{at}: its input activations are not quantized (plan act=None); "
                         "the integer engine needs integer inputs")
    fmt = qact.fmt
    if not isinstance(fmt, FixedPoint):
        raise ModelError(f"{at}: activation format {fmt} is not supported by the integer engine "
                         "(fixed point only)")
    if qact.mode != "quant":
        raise ModelError(f"{at}: its activation quantizer is in mode {qact.mode!r}; calibrate the model first")
    s = float(qact.scale)
    if not np.isfinite(s) or s <= 0:
        raise ModelError(f"{at}: activation scale {s} is not a positive number")
    key = (v.node, v.shape, json.dumps(fmt.to_dict(), sort_keys=True), s, tuple(m.name for m in v.moves))
    if key in ctx.quant_cache:
        return ctx.quant_cache[key]
    attrs = {"fmt": fmt.to_dict(), "act_scale": s, "qmin": fmt.qmin, "qmax": fmt.qmax}
    bound = max(abs(fmt.qmin), abs(fmt.qmax))
    grid = np.array(s, dtype=np.float64)
    if v.is_float:
        base = v.base_shape if v.moves and v.base_shape is not None else v.shape
        out = ctx.add(IntNode(name, "quantize", ("input",), base, grid, bound, attrs, {},
                              f"{owner.name} ({owner.type})"))
        for move in v.moves:  # the float input's data movement, on the codes (exact: see Val)
            out = ctx.add(IntNode(move.name, move.op, (out.node,), move.shape, grid, bound, move.attrs, move.arrays,
                                  move.source))
        ctx.quant_cache[key] = out
        return out
    elif same_codes(ctx, v, fmt, s):
        ctx.quant_cache[key] = v
        return v
    else:
        # a wide input (a residual stream kept on an accumulator grid through many adds) gets a narrower
        # multiplier, as narrow as keeps |x| * M within int64, but never under the output's bits + 3 (the
        # multiplier's error then stays under half an output step)
        def too_wide(m: np.ndarray, n: np.ndarray) -> bool:
            return v.bound * int(m.max()) + 2 ** int(n.max()) >= INT64_LIMIT

        mult_bits, least = ctx.cfg.mult_bits, min(ctx.cfg.mult_bits, fmt.bits + 3)
        m, n = dyadic_unique(v.scale / s, mult_bits)
        while too_wide(m, n) and mult_bits > least:
            mult_bits -= 1
            m, n = dyadic_unique(v.scale / s, mult_bits)
        if too_wide(m, n):
            raise ModelError(f"{at}: requantizing its input needs more than 62 bits even with a {mult_bits}-bit "
                             f"multiplier (|x| <= {v.bound}, M <= {int(m.max())})")
        if mult_bits != ctx.cfg.mult_bits:
            attrs["mult_bits"] = mult_bits
        node = IntNode(name, "requant", (v.node,), v.shape, grid, bound, attrs, {"M": m, "n": n},
                       f"{owner.name} ({owner.type})")
    out = ctx.add(node)
    ctx.quant_cache[key] = out
    return out
