"""Lowering of an :class:`~mixq.engine.model.IntModel` to a program of convolutions only (the
single-engine "mnisc" accelerator), and its integer runner.

    prog = lower(im)                                   # Program: ConvStep / MoveStep, plain arrays
    codes = run_program(prog, prog_input(prog, x))     # == IntEngine(im)(x).codes, element for element

A :class:`ConvStep` is one pass of the execution unit (EU): read its inputs (several inputs are
concatenated along the channels while reading: that is a concat at no cost), insert zeros, pad, convolve
with a weight preset, shift and add the bias (the accumulator ``(sum w*x) << acc_shift + bias``, clipped
to ``acc_bits`` where the integer model saturates), then one or more *outputs*, each an ordered chain of
post-ops on the accumulator — ``requant`` (``clamp((x * M + 2**(n-1)) >> n, qmin, qmax)``, round half up,
per channel), ``clamp`` and at most one ``maxpool`` — written to memory. A :class:`MoveStep` moves
data: ``pixel_shuffle`` (the subpixel reshape) and ``concat`` (only where a consumer is not a conv).
Flatten and unit-dim reshapes are views: a step reads a tensor with the shape it needs.

How each op of the integer model maps (every mapping exact, integer for integer):

=============== ================================================================================
conv            a ConvStep with the layer's weight codes, bias, stride, padding, dilation, groups
linear          a ConvStep of 1x1 kernels on the input read as ``(F, 1, 1)``
requant / clamp post-ops of the step that made their input; through a move they are mapped back to
                the producer's layout (arrays reshaped, un-shuffled, or taken at the non-zero positions
                of a zero insertion / padding: legal as ``op(0) == 0``), else an identity conv
                (depthwise, weight 1) carries them
maxpool         a post-op of the step that made its input (conv + pooling in one pass); on anything
                else, or a second pool, an identity conv with the pool as its post-op. Max-pool is
                not linear: it is the EU's pooling unit, never a weight preset
sumpool         (average pooling: the 1/count is in the grid) a depthwise conv with all-ones weights
                of the window, its stride and zero padding: average pooling *is* a conv
add             a 1x1 conv over its operands concatenated, weights ``M_i`` on the diagonal of each
                operand's block (``sum_i x_i * M_i``), then a requant by ``2**-n`` (``M = 1``, no clamp);
                where an operand is a plain conv's raw accumulator, that conv with the add folded into its
                weights (``M_i * W_i``), unless ``lower``'s ``fuse`` refuses it
zero_insert     the zero insertion of the conv that reads it (a transposed conv = zero insertion +
                conv); else an identity conv with zero insertion
pad             added to the padding of the conv that reads it; else an identity conv with padding
upsample        (nearest, integer factors ``k``) zero insertion by ``k`` with ``k - 1`` extra zeros, then an
                all-ones depthwise ``k x k`` conv padded ``k - 1`` at the top / left
pixel_shuffle   a MoveStep ``pixel_shuffle`` (a reshape: channel ``c*r*r + i*r + j`` -> pixel ``(i, j)``)
cat             the inputs of the conv that reads it (elementwise post-ops split per part); else a
                MoveStep ``concat``
flatten/reshape views (no step)
quantize        the program input (the network input's codes, :func:`prog_input`)
=============== ================================================================================

Anything else (lookup tables, interpolation, channel reductions, products, affines, gated convs)
raises a :class:`~mixq.errors.ModelError` naming the node. The runner computes with exact integers: a
conv in float64 where its worst-case partial sum on the data is below 2**53, else int64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mixq.engine.arith import FLOAT64_EXACT, INT64_LIMIT, requantize
from mixq.engine.kernels import conv2d_int64
from mixq.engine.model import IntModel, IntNode
from mixq.errors import ModelError
from mixq.formats import format_from_dict

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Read:
    """A stored tensor read with a shape (the same elements in the same order)."""

    tensor: str
    shape: Shape


@dataclass(frozen=True, eq=False)
class PostOp:
    """One op of a step's output chain: ``requant`` (arrays ``M``, ``n``; attrs ``qmin``, ``qmax``, None =
    no clamp), ``clamp`` (arrays ``lo`` / ``hi``, optional) or ``maxpool`` (attrs ``kernel``, ``stride``,
    ``padding``, ``dilation``, ``ceil_mode``). Arrays broadcast over the step's accumulator ``(C, H, W)``."""

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepOutput:
    """A tensor a step writes: its post-op chain applied to the accumulator."""

    name: str
    shape: Shape
    ops: tuple[PostOp, ...]


@dataclass(frozen=True, eq=False)
class ConvStep:
    """One pass of the EU (module docstring); ``kind`` says what it came from (conv, linear, add,
    sumpool, identity), ``source`` the integer-model nodes it carries out."""

    name: str
    kind: str
    inputs: tuple[Read, ...]
    in_shape: Shape  # (C, H, W) after the concat of the inputs, before zero insertion and padding
    weight: np.ndarray  # (O, C / groups, kh, kw) int64
    bias: np.ndarray  # (O,) int64
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    zero_insert: tuple[int, int] = (1, 1)  # stride of the zero insertion (1: none)
    zero_extra: tuple[int, int] = (0, 0)  # extra zero rows / columns at the bottom / right
    acc_shift: int = 0
    acc_bits: int | None = None  # saturate the accumulator to this signed width (None: never)
    outputs: tuple[StepOutput, ...] = ()
    source: tuple[str, ...] = ()

    @property
    def acc_shape(self) -> Shape:
        c, h, w = self.in_shape
        (zh, zw), (eh, ew), (t, b, le, r) = self.zero_insert, self.zero_extra, self.padding
        hi, wi = (h - 1) * zh + 1 + eh + t + b, (w - 1) * zw + 1 + ew + le + r
        kh, kw = self.weight.shape[2:]
        return (int(self.weight.shape[0]), (hi - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1,
                (wi - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1)


@dataclass(frozen=True)
class MoveStep:
    """Data movement: ``pixel_shuffle`` (attrs ``factor``) or ``concat`` of the inputs along channels."""

    name: str
    kind: str
    inputs: tuple[Read, ...]
    shape: Shape
    attrs: dict[str, Any] = field(default_factory=dict)


Step = ConvStep | MoveStep


@dataclass(frozen=True, eq=False)
class Program:
    """Steps in execution order; the input tensor ``input`` (the first quantizer's codes) and the output."""

    steps: tuple[Step, ...]
    input: Read
    output: Read
    input_quantizer: dict[str, Any]  # fmt, act_scale of the network input's quantizer

    def conv_steps(self) -> list[ConvStep]:
        return [s for s in self.steps if isinstance(s, ConvStep)]


# ----------------------------------------------------------------------------- lowering


@dataclass(frozen=True)
class _Move:
    kind: str  # reshape, pixel_shuffle, zero_insert, pad
    in_shape: Shape
    out_shape: Shape
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Ref:
    """A node's value: ``moves(ops(tensor))``, or the concat of ``parts`` along channels."""

    tensor: str = ""
    shape: Shape = ()  # the tensor's shape
    ops: tuple[PostOp, ...] = ()
    moves: tuple[_Move, ...] = ()
    parts: tuple[_Ref, ...] = ()

    @property
    def value_shape(self) -> Shape:
        """The shape of ``ops(tensor)`` (a max-pool changes it)."""
        return _pooled(self.shape, self.ops)

    @property
    def out_shape(self) -> Shape:
        if self.parts:
            return (sum(p.out_shape[0] for p in self.parts), *self.parts[0].out_shape[1:])
        return self.moves[-1].out_shape if self.moves else self.value_shape


ZERO_MOVES = ("zero_insert", "pad")  # moves that insert zeros, in the order a conv applies them
ACC = "#acc"  # suffix of a conv step's accumulator (a value, stored only as an output)


def _full(a: np.ndarray, shape: Shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(a), shape)


def _compact(a: np.ndarray) -> np.ndarray:
    """``a`` with every axis it is constant along reduced to size 1 (the axis kept)."""
    a = np.asarray(a)
    for ax in range(a.ndim):
        if a.shape[ax] > 1 and (a == a.take([0], axis=ax)).all():
            a = a.take([0], axis=ax)
    return np.ascontiguousarray(a)


def _back(a: np.ndarray, m: _Move) -> np.ndarray:
    """An elementwise op's array on a move's output, mapped onto the move's input."""
    full = _full(a, m.out_shape)
    if m.kind == "reshape":
        return full.reshape(m.in_shape)
    if m.kind == "pixel_shuffle":
        r = int(m.attrs["factor"])
        c, h, w = m.in_shape
        return full.reshape(c // (r * r), h, r, w, r).transpose(0, 2, 4, 1, 3).reshape(m.in_shape)
    _, h, w = m.in_shape
    if m.kind == "zero_insert":
        sh, sw = m.attrs["stride"]
        return full[:, : (h - 1) * sh + 1 : sh, : (w - 1) * sw + 1 : sw]
    left, _, top, _ = m.attrs["pads"]
    return full[:, top : top + h, left : left + w]


def _keeps_zero(op: PostOp) -> bool:
    """``op(0) == 0`` everywhere (an op may then move behind zero insertion and padding)."""
    if op.kind == "requant":
        lo, hi = op.attrs["qmin"], op.attrs["qmax"]
        return (lo is None or lo <= 0) and (hi is None or hi >= 0)
    lo, hi = op.arrays.get("lo"), op.arrays.get("hi")
    return (lo is None or bool((lo <= 0).all())) and (hi is None or bool((hi >= 0).all()))


def _map_op(op: PostOp, moves: tuple[_Move, ...]) -> PostOp:
    arrays = dict(op.arrays)
    for m in reversed(moves):
        arrays = {k: _back(v, m) for k, v in arrays.items()}
    return replace(op, arrays={k: _compact(v) for k, v in arrays.items()})


def _split_op(op: PostOp, shape: Shape, parts: tuple[_Ref, ...]) -> list[PostOp]:
    """An elementwise op on a concat, as one op per part (arrays sliced along the channels)."""
    out, c0 = [], 0
    for p in parts:
        c = p.out_shape[0]
        arrays = {k: _compact(_full(v, shape)[c0 : c0 + c]) for k, v in op.arrays.items()}
        out.append(replace(op, arrays=arrays))
        c0 += c
    return out


def _ident(c: int) -> np.ndarray:
    return np.ones((c, 1, 1, 1), dtype=np.int64)


class _Lowering:
    def __init__(self, im: IntModel, fuse: Callable[[str], bool] | None = None) -> None:
        self.im = im
        self.fuse = fuse
        self.steps: dict[str, Step] = {}
        self.refs: dict[str, _Ref] = {}
        self.consumers: dict[str, int] = {}
        for n in im.nodes:
            for i in n.inputs:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        self.consumers[im.output] = self.consumers.get(im.output, 0) + 1

    # -- storage
    def identity(self, read: Read, name: str, ops: tuple[PostOp, ...] = ()) -> _Ref:
        """An identity conv (depthwise, weight 1) reading ``read``: its accumulator, with ``ops`` pending."""
        c = read.shape[0]
        step = ConvStep(f"{name}:id", "identity", (read,), read.shape, _ident(c), np.zeros(c, dtype=np.int64),
                        groups=c, source=(name,))
        self.steps[step.name] = step
        return _Ref(step.name + ACC, read.shape, ops)

    def store_ops(self, ref: _Ref, name: str) -> Read:
        """The tensor ``ops(tensor)``: an output of the conv step that made ``tensor`` (an identity conv's
        when no conv made it)."""
        if not ref.tensor.endswith(ACC):
            if not ref.ops:
                return Read(ref.tensor, ref.shape)
            ref = self.identity(Read(ref.tensor, ref.shape), name, ref.ops)
        step = self.steps[ref.tensor[: -len(ACC)]]
        assert isinstance(step, ConvStep)
        for o in step.outputs:
            if o.ops == ref.ops:
                return Read(o.name, o.shape)
        out = StepOutput(name, ref.value_shape, ref.ops)
        self.steps[step.name] = replace(step, outputs=(*step.outputs, out))
        return Read(name, out.shape)

    def store(self, ref: _Ref, name: str, for_conv: bool = False) -> tuple[tuple[Read, ...], tuple[_Move, ...]]:
        """``ref`` as stored tensors; ``for_conv`` leaves the trailing reshapes, one padding and one zero
        insertion before it (the order a conv reads in) to the reading conv and returns them."""
        if ref.parts:
            reads = tuple(r for i, p in enumerate(ref.parts) for r in self.store(p, f"{name}/{i}")[0])
            if for_conv:
                return reads, ()
            self.steps[name] = MoveStep(name, "concat", reads, ref.out_shape)
            return (Read(name, ref.out_shape),), ()
        moves, tail = list(ref.moves), list[_Move]()
        if for_conv:
            while moves and moves[-1].kind == "reshape":
                tail.insert(0, moves.pop())
            for kind in ZERO_MOVES[::-1]:
                if moves and moves[-1].kind == kind:
                    tail.insert(0, moves.pop())
        base = self.store_ops(ref, name if not moves and not tail else f"{name}:pre")
        for i, m in enumerate(moves):
            last = i == len(moves) - 1
            tname = name if last and not tail else f"{name}:m{i}"
            if m.kind == "reshape":
                base = Read(base.tensor, m.out_shape)
            elif m.kind == "pixel_shuffle":
                self.steps[tname] = MoveStep(tname, "pixel_shuffle", (Read(base.tensor, m.in_shape),), m.out_shape,
                                             dict(m.attrs))
                base = Read(tname, m.out_shape)
            else:
                acc = self.identity(Read(base.tensor, m.in_shape), tname)
                sname = acc.tensor[: -len(ACC)]
                step = self.steps[sname]
                assert isinstance(step, ConvStep)
                self.steps[sname] = _with_moves(step, (m,))
                base = self.store_ops(replace(acc, shape=m.out_shape), tname)
        return (base,), tuple(tail)

    # -- ops
    def lower(self) -> Program:
        nodes = list(self.im.nodes)
        first = nodes[0]
        if first.op != "quantize":
            raise ModelError(f"int model node {first.name!r}: the program starts at the input quantizer, got "
                             f"{first.op!r}")
        self.refs[first.name] = _Ref(first.name, tuple(first.shape))
        for node in nodes[1:]:
            handler = _HANDLERS.get(node.op)
            if handler is None:
                raise ModelError(f"int model node {node.name!r} (op {node.op!r}): no conv form on the single "
                                 f"engine (supported: {', '.join(sorted(_HANDLERS))})")
            self.refs[node.name] = handler(self, node)
        out_ref = self.refs[self.im.output]
        (read,), _ = self.store(out_ref, self.im.output)
        q = first.attrs
        return Program(tuple(self.steps.values()), Read(first.name, tuple(first.shape)),
                       Read(read.tensor, tuple(self.im.node(self.im.output).shape)),
                       {"fmt": dict(q["fmt"]), "act_scale": float(q["act_scale"]), "bound": int(first.bound)})

    def ref(self, node: IntNode, i: int = 0) -> _Ref:
        return self.refs[node.inputs[i]]

    def elementwise(self, node: IntNode, op: PostOp) -> _Ref:
        return self._apply(self.ref(node), op, node)

    def _apply(self, ref: _Ref, op: PostOp, node: IntNode) -> _Ref:
        if ref.parts:
            split = _split_op(op, ref.out_shape, ref.parts)
            return _Ref(parts=tuple(self._apply(p, o, node) for p, o in zip(ref.parts, split, strict=True)))
        if any(m.kind in ZERO_MOVES for m in ref.moves) and not _keeps_zero(op):
            read = self.store(ref, f"{node.name}:in")[0][0]
            ref = _Ref(read.tensor, read.shape)
        return replace(ref, ops=(*ref.ops, _map_op(op, ref.moves)))

    def move(self, node: IntNode, kind: str, **attrs: Any) -> _Ref:
        ref = self.ref(node)
        in_shape, out_shape = tuple(ref.out_shape), tuple(node.shape)
        if ref.parts:
            (read,), _ = self.store(ref, f"{node.name}:in")
            ref = _Ref(read.tensor, read.shape)
        return replace(ref, moves=(*ref.moves, _Move(kind, in_shape, out_shape, attrs)))

    def conv_step(self, node: IntNode, kind: str, refs: list[_Ref], weight: np.ndarray, bias: np.ndarray,
                  ops: tuple[PostOp, ...] = (), in_shape: Shape | None = None, peel: bool = True,
                  name: str = "", **fields: Any) -> _Ref:
        name = name or node.name
        reads: list[Read] = []
        tail: tuple[_Move, ...] = ()
        for i, r in enumerate(refs):
            rd, t = self.store(r, f"{name}:in{i}" if len(refs) > 1 else f"{name}:in",
                               for_conv=peel and len(refs) == 1)
            reads += rd
            tail = t
        shape = in_shape or _cat_shape(reads, tail)
        step = ConvStep(name, kind, tuple(reads), shape, weight.astype(np.int64), bias.astype(np.int64),
                        source=(node.name,), **fields)
        step = _with_moves(step, tuple(t for t in tail if t.kind != "reshape"))
        self.steps[step.name] = step
        return _Ref(step.name + ACC, step.acc_shape, ops)


def _cat_shape(reads: list[Read], tail: tuple[_Move, ...]) -> Shape:
    zeros = [t for t in tail if t.kind != "reshape"]
    if zeros:
        return zeros[0].in_shape
    if tail:
        return tail[-1].out_shape
    return (sum(r.shape[0] for r in reads), *reads[0].shape[1:])


def _with_moves(step: ConvStep, moves: tuple[_Move, ...]) -> ConvStep:
    for m in moves:
        if m.kind == "zero_insert":
            step = replace(step, zero_insert=tuple(m.attrs["stride"]), zero_extra=tuple(m.attrs["extra"]))
        else:
            left, right, top, bottom = m.attrs["pads"]
            t, b, le, r = step.padding
            step = replace(step, padding=(t + top, b + bottom, le + left, r + right))
    return step


def _pooled(shape: Shape, ops: tuple[PostOp, ...]) -> Shape:
    for op in ops:
        if op.kind == "maxpool":
            hw = F.max_pool2d(torch.zeros(1, 1, *shape[1:]), **_pool_args(op)).shape[2:]  # one channel: cheap
            shape = (shape[0], *hw)
    return shape


def _pool_args(op: PostOp) -> dict[str, Any]:
    a = op.attrs
    return {"kernel_size": a["kernel"], "stride": a["stride"], "padding": a["padding"], "dilation": a["dilation"],
            "ceil_mode": a["ceil_mode"]}


def _conv(lw: _Lowering, node: IntNode) -> _Ref:
    a, w = node.attrs, np.asarray(node.arrays["weight"])
    budget = int(a["acc_budget"]) if a.get("saturate") else None
    common: dict[str, Any] = {"acc_shift": int(a.get("acc_frac_bits", 0)), "acc_bits": budget}
    if node.op == "linear":
        f = int(w.shape[1])
        lw.conv_step(node, "linear", [lw.ref(node)], w.reshape(*w.shape, 1, 1), node.arrays["bias"],
                     in_shape=(f, 1, 1), **common)
        step = lw.steps[node.name]
        assert isinstance(step, ConvStep)
        return _Ref(node.name + ACC, step.acc_shape, (), (_Move("reshape", step.acc_shape, tuple(node.shape)),))
    ph, pw = a["padding"]
    return lw.conv_step(node, "conv", [lw.ref(node)], w, node.arrays["bias"], stride=tuple(a["stride"]),
                        padding=(ph, ph, pw, pw), dilation=tuple(a["dilation"]), groups=int(a["groups"]), **common)


def _requant(lw: _Lowering, node: IntNode) -> _Ref:
    a = node.attrs
    return lw.elementwise(node, PostOp("requant", {"M": np.asarray(node.arrays["M"], dtype=np.int64),
                                                   "n": np.asarray(node.arrays["n"], dtype=np.int64)},
                                       {"qmin": int(a["qmin"]), "qmax": int(a["qmax"])}))


def _clamp(lw: _Lowering, node: IntNode) -> _Ref:
    arrays = {k: np.asarray(node.arrays[k], dtype=np.int64) for k in ("lo", "hi") if k in node.arrays}
    return lw.elementwise(node, PostOp("clamp", arrays))


def _maxpool(lw: _Lowering, node: IntNode) -> _Ref:
    ref = lw.ref(node)
    op = PostOp("maxpool", {}, {k: node.attrs[k] for k in ("kernel", "stride", "padding", "dilation", "ceil_mode")})
    if ref.parts or ref.moves or not ref.tensor.endswith(ACC) or any(o.kind == "maxpool" for o in ref.ops):
        c = ref.out_shape[0]  # an identity conv carries the pool (a concat read in place)
        return lw.conv_step(node, "identity", [ref], _ident(c), np.zeros(c, dtype=np.int64), ops=(op,), groups=c,
                            name=f"{node.name}:id")
    return replace(ref, ops=(*ref.ops, op))


def _sumpool(lw: _Lowering, node: IntNode) -> _Ref:
    a, ref = node.attrs, lw.ref(node)
    if a.get("shift"):
        _refuse(node, "an average pool that rounds its input to fewer bits first (shift)")
    if a.get("ceil_mode") or "divisors" in a:
        _refuse(node, "an average pool in ceil mode or with a divisor that varies by position")
    c = ref.out_shape[0]
    (kh, kw), (ph, pw) = a["kernel"], a["padding"]
    out = lw.conv_step(node, "sumpool", [ref], np.ones((c, 1, kh, kw), dtype=np.int64), np.zeros(c, dtype=np.int64),
                       stride=tuple(a["stride"]), padding=(ph, ph, pw, pw), groups=c)
    if tuple(node.shape) != out.shape:
        return replace(out, moves=(_Move("reshape", out.shape, tuple(node.shape)),))
    return out


def _upsample(lw: _Lowering, node: IntNode) -> _Ref:
    """Nearest upsampling by ``(kh, kw)``: zero insertion with ``k - 1`` extra zeros, then an all-ones
    depthwise ``kh x kw`` conv padded ``k - 1`` at the top / left: each output window holds one input pixel."""
    kh, kw = (int(k) for k in node.attrs["scale"])
    ref = lw.ref(node)
    c = ref.out_shape[0]
    return lw.conv_step(node, "upsample", [ref], np.ones((c, 1, kh, kw), dtype=np.int64), np.zeros(c, dtype=np.int64),
                        peel=False, groups=c, zero_insert=(kh, kw), zero_extra=(kh - 1, kw - 1),
                        padding=(kh - 1, 0, kw - 1, 0))


def _add(lw: _Lowering, node: IntNode) -> _Ref:
    refs = [lw.refs[i] for i in node.inputs]
    shape = tuple(int(d) for d in node.shape)
    c = shape[0]
    ms = []
    for k in range(len(refs)):
        mk = _compact(_full(np.asarray(node.arrays["M"], dtype=np.int64)[k], shape))
        if mk.shape[1:] != (1, 1):
            raise ModelError(f"int model node {node.name!r} (add): multipliers that vary over the pixels have no "
                             "conv form")
        ms.append(mk.reshape(-1))
    n = np.asarray(node.arrays["n"], dtype=np.int64)
    round_op = PostOp("requant", {"M": np.ones(1, dtype=np.int64), "n": _compact(_full(n, shape))},
                      {"qmin": None, "qmax": None})
    fused = _fuse_add(lw, node, refs, ms, round_op) if lw.fuse is None or lw.fuse(node.name) else None
    if fused is not None:
        return fused
    w = np.zeros((c, c * len(refs), 1, 1), dtype=np.int64)
    for k, mk in enumerate(ms):
        w[np.arange(c), k * c + np.arange(c), 0, 0] = mk
    return lw.conv_step(node, "add", refs, w, np.zeros(c, dtype=np.int64), ops=(round_op,))


def _geometry(step: ConvStep) -> tuple[Any, ...]:
    return (step.weight.shape[2:], step.stride, step.padding, step.dilation, step.zero_insert, step.zero_extra,
            step.in_shape[1:])


def _fuse_add(lw: _Lowering, node: IntNode, refs: list[_Ref], ms: list[np.ndarray], round_op: PostOp) -> _Ref | None:
    """The add as one conv ("residual add by setting the conv weights"): operands that are the raw accumulators
    of plain convs read by nothing else, with one geometry, become that conv over their inputs concatenated,
    weights ``M_k * W_k << acc_shift_k``; every other operand is read at the kernel's centre tap with weight
    ``M_k``, which needs an output of the input's size. None when no operand qualifies."""
    steps: dict[int, ConvStep] = {}
    for k, r in enumerate(refs):
        st = lw.steps.get(r.tensor[: -len(ACC)]) if r.tensor.endswith(ACC) else None
        if (isinstance(st, ConvStep) and st.kind == "conv" and not (r.ops or r.moves or r.parts or st.outputs)
                and st.groups == 1 and st.acc_bits is None and lw.consumers[node.inputs[k]] == 1
                and (not steps or _geometry(st) == _geometry(next(iter(steps.values()))))):
            steps[k] = st
    if not steps:
        return None
    first = next(iter(steps.values()))
    (kh, kw), (t, _, le, _), (dh, dw) = first.weight.shape[2:], first.padding, first.dilation
    centre = (t // dh, le // dw)
    others = [k for k in range(len(refs)) if k not in steps]
    if others and (first.acc_shape[1:] != first.in_shape[1:] or first.stride != (1, 1) or t % dh or le % dw
                   or centre[0] >= kh or centre[1] >= kw or first.zero_insert != (1, 1)
                   or first.zero_extra != (0, 0)):
        return None
    c = int(node.shape[0])
    blocks: list[np.ndarray] = []
    reads: list[Read] = []
    bias = np.zeros(c, dtype=np.int64)
    for k, st in steps.items():
        blocks.append(st.weight * (ms[k] << st.acc_shift).reshape(-1, 1, 1, 1))
        reads += st.inputs
        bias += ms[k] * st.bias
        del lw.steps[st.name]
    for k in others:
        (read,), _ = lw.store(refs[k], f"{node.name}:in{k}")
        tap = np.zeros((c, c, kh, kw), dtype=np.int64)
        tap[np.arange(c), np.arange(c), centre[0], centre[1]] = ms[k]
        blocks.append(tap)
        reads.append(read)
    cin = sum(b.shape[1] for b in blocks)
    step = replace(first, name=node.name, kind="add", inputs=tuple(reads), in_shape=(cin, *first.in_shape[1:]),
                   weight=np.concatenate(blocks, axis=1), bias=bias, acc_shift=0, outputs=(),
                   source=(*(s for st in steps.values() for s in st.source), node.name))
    lw.steps[step.name] = step
    return _Ref(step.name + ACC, step.acc_shape, (round_op,))


def _cat(lw: _Lowering, node: IntNode) -> _Ref:
    if int(node.attrs.get("dim", 1)) != 1:
        raise ModelError(f"int model node {node.name!r} (cat): only a concat of channels (dim 1)")
    return _Ref(parts=tuple(lw.refs[i] for i in node.inputs))


def _view(lw: _Lowering, node: IntNode) -> _Ref:
    return lw.move(node, "reshape")


def _refuse(node: IntNode, what: str) -> Any:
    raise ModelError(f"int model node {node.name!r} (op {node.op!r}): {what} has no conv form on the single engine")


_HANDLERS = {
    "conv": _conv, "linear": _conv, "requant": _requant, "clamp": _clamp, "maxpool": _maxpool, "sumpool": _sumpool,
    "add": _add, "cat": _cat, "upsample": _upsample, "flatten": _view, "reshape": _view,
    "pixel_shuffle": lambda lw, n: lw.move(n, "pixel_shuffle", factor=int(n.attrs["factor"])),
    "zero_insert": lambda lw, n: lw.move(n, "zero_insert", stride=[int(s) for s in n.attrs["stride"]],
                                         extra=[int(e) for e in n.attrs["extra"]]),
    "pad": lambda lw, n: lw.move(n, "pad", pads=[int(p) for p in n.attrs["pads"]]) if "channel_pads" not in n.attrs
    else _refuse(n, "zero padding of the channels"),
}


def lower(im: IntModel, fuse: Callable[[str], bool] | None = None) -> Program:
    """The program of convolutions (and moves) that computes ``im`` exactly (module docstring). ``fuse(name)``:
    whether the add node ``name`` may become one conv with the convs that make its operands (default: every add
    that can); an add it refuses is its own 1x1 step reading those convs' accumulators."""
    return _Lowering(im, fuse).lower()


# ----------------------------------------------------------------------------- running


def prog_input(prog: Program, x: torch.Tensor) -> torch.Tensor:
    """The network input's codes, quantized exactly as the integer model's first quantizer does."""
    q = prog.input_quantizer
    fmt = format_from_dict(q["fmt"])
    s = torch.tensor(q["act_scale"], dtype=torch.float32)
    return fmt.quantize(x.reshape(-1, *prog.input.shape), s).to(torch.int64)


def _worst_sum(x: torch.Tensor, step: ConvStep) -> int:
    """The largest ``sum |w| * |x|`` of any output on this data (per input channel: exact bound of every
    partial sum, in any order)."""
    g, w = step.groups, np.abs(step.weight).sum(axis=(2, 3))  # (O, C / g)
    xmax = x.abs().amax(dim=(0, 2, 3)).to(torch.int64).numpy().reshape(g, -1)  # (g, C / g)
    per_out = np.einsum("goc,gc->go", w.reshape(g, -1, w.shape[1]), xmax, dtype=object)
    return int(per_out.max(initial=0))


def _exact_conv(x: torch.Tensor, step: ConvStep) -> torch.Tensor:
    w = torch.from_numpy(step.weight)
    top = _worst_sum(x, step) if x.numel() else 0
    if top >= INT64_LIMIT:
        raise ModelError(f"program step {step.name!r}: partial sums reach {top}, beyond int64")
    if top < FLOAT64_EXACT:
        y = F.conv2d(x.double(), w.double(), None, step.stride, 0, step.dilation, step.groups)
        return y.to(torch.int64)
    return conv2d_int64(x, w, list(step.stride), [0, 0], list(step.dilation), step.groups)


def _top(x: torch.Tensor) -> int:
    return int(x.abs().max()) if x.numel() else 0


def _zero_insert(x: torch.Tensor, stride: tuple[int, int], extra: tuple[int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    (sh, sw), (eh, ew) = stride, extra
    out = x.new_zeros(n, c, (h - 1) * sh + 1 + eh, (w - 1) * sw + 1 + ew)
    out[:, :, : (h - 1) * sh + 1 : sh, : (w - 1) * sw + 1 : sw] = x
    return out


def _post(y: torch.Tensor, op: PostOp, step: str) -> torch.Tensor:
    arr = {k: torch.from_numpy(np.array(v, dtype=np.int64)).unsqueeze(0) for k, v in op.arrays.items()}
    if op.kind == "requant":
        if _top(y) * int(op.arrays["M"].max()) >= INT64_LIMIT:
            raise ModelError(f"program step {step!r}: requantization beyond int64")
        y = requantize(y, arr["M"], arr["n"])
        lo, hi = op.attrs["qmin"], op.attrs["qmax"]
        return y if lo is None and hi is None else y.clamp(lo, hi)
    if op.kind == "clamp":
        return torch.clamp(y, arr.get("lo"), arr.get("hi"))
    if _top(y) >= FLOAT64_EXACT:
        raise ModelError(f"program step {step!r}: max-pool of values beyond 2**53")
    return F.max_pool2d(y.double(), **_pool_args(op)).to(torch.int64)


def _run_conv(step: ConvStep, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    x = torch.cat(xs, 1).reshape(-1, *step.in_shape)
    if step.zero_insert != (1, 1) or step.zero_extra != (0, 0):
        x = _zero_insert(x, step.zero_insert, step.zero_extra)
    t, b, le, r = step.padding
    x = F.pad(x, (le, r, t, b))
    acc = (_exact_conv(x, step) << step.acc_shift) + torch.from_numpy(step.bias).reshape(1, -1, 1, 1)
    if step.acc_bits is not None:
        acc = acc.clamp(-(2 ** (step.acc_bits - 1)), 2 ** (step.acc_bits - 1) - 1)
    out = {}
    for o in step.outputs:
        y = acc
        for op in o.ops:
            y = _post(y, op, step.name)
        out[o.name] = y
    return out


def _run_move(step: MoveStep, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    if step.kind == "concat":
        return {step.name: torch.cat(xs, 1)}
    r = int(step.attrs["factor"])
    x = xs[0]
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
    return {step.name: y.reshape(n, c // (r * r), h * r, w * r)}


@torch.no_grad()
def run_program(prog: Program, codes: torch.Tensor, keep: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """Run ``prog`` on the input codes (int64); the output codes, or with ``keep`` every tensor written."""
    env: dict[str, torch.Tensor] = {prog.input.tensor: codes.to(torch.int64)}
    for step in prog.steps:
        xs = [env[r.tensor].reshape(-1, *r.shape) for r in step.inputs]
        env.update(_run_conv(step, xs) if isinstance(step, ConvStep) else _run_move(step, xs))
    out = env[prog.output.tensor].reshape(-1, *prog.output.shape)
    return env if keep else out
