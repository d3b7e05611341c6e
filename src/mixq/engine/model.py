"""The integer model: plain data (numpy arrays + JSON-able attributes), no torch modules.

An :class:`IntModel` is a list of :class:`IntNode` in execution order. Every
node produces one integer tensor whose real value is ``int * scale``; ``scale``
(float64) is the node's *grid*, broadcastable to the node's per-sample
``shape`` — a scalar for activation codes, one value per channel for
accumulators (``s_act * s_w[row] * 2**-frac_bits[row]``), one per feature after
a flatten, one per element where a pixel shuffle interleaves channels on different
grids (:mod:`mixq.engine.grids`). ``bound`` is a proven upper limit of ``|int|`` over every possible
input (from the weights and the format ranges, never from data).

Node ops (``attrs`` / ``arrays`` each uses):

============= ====================================================================================
quantize      float network input -> codes of a fixed-point format: ``fmt.quantize(x, act_scale)``
              (ties to even, exactly as the fake-quant input quantizer); attrs ``fmt``, ``act_scale``;
              the input is first reshaped to the node's ``shape`` (unit dims a shape-only op inserted
              or removed before the first quantizer)
requant       integer -> codes: ``clamp(requantize(x, M, n), qmin, qmax)`` (round half up);
              arrays ``M``, ``n``; attrs ``fmt``, ``act_scale``, ``qmin``, ``qmax``
conv          codes -> accumulator ``sum w*x + B`` (int64); arrays ``weight`` (codes), ``row_format``
              (index into attrs ``formats``), ``bias`` (B, at accumulator scale), ``w_scale`` (per
              row), ``bias_float`` (the float bias, for exports); attrs ``stride``, ``padding``,
              ``dilation``, ``groups``, ``acc_bits`` (worst case), ``acc_budget``, ``saturate``
linear        the same for a fully connected layer
clamp         ``clamp(x, lo, hi)``: ReLU (lo 0), ReLU6 / Hardtanh (limits rounded half up onto the
              grid; per channel for a Hardtanh with per-channel bounds, e.g. CLE's clipped ReLU6);
              arrays ``lo``, ``hi``, per-channel real limits ``lo_float`` / ``hi_float`` (float32, for
              exports); attrs ``lo_real``, ``hi_real`` (scalar limits; None = unbounded or per channel)
maxpool       window maximum; attrs ``kernel``, ``stride``, ``padding``, ``dilation``, ``ceil_mode``
sumpool       window *sum* (average pooling: the 1/count factor moves into the grid, no rounding);
              attrs ``kernel``, ``stride``, ``padding``, ``count``, ``float_op`` (how the fake-quant
              model wrote it, for exports), ``keepdim``, ``ceil_mode``, ``divisors`` (the divisor per output
              pixel where it varies — ceil mode, padding without ``count_include_pad`` —: the grid is then
              ``grid_in / divisor`` per pixel; absent otherwise), ``shift`` = k where a window sum would not fit
              ``sum_bits``: the input is first rounded half up to ``k`` fewer bits (``(x + 2**(k-1)) >> k``,
              grid ``grid_in * 2**k / count``; absent when none)
add           residual add at the finer grid of its operands: ``requantize_sum(x_i, M_i, n)``;
              arrays ``M`` (stacked per operand), ``n``
reduce        a reduction over the channels (dim 1): ``(R_c(x_c * M_c) + 2**(n-1)) >> n`` with ``R`` the
              max or the sum (a mean: the 1/C is in the grid), ``M_c`` bringing the channels onto one
              grid (all 1 and ``n = 0`` when they share one); arrays ``M`` (per channel), ``n``; attrs
              ``fn`` (max / sum), ``dim``, ``keepdim``, ``count``, ``float_op`` (amax / mean)
affine        a BatchNorm left unfolded, per channel: ``((x * M_c + 2**(n_c-1)) >> n_c) + B_c`` (one rounding,
              half up; ``M_c`` signed), on one output grid (:mod:`mixq.engine.convert_ops`); arrays ``M``,
              ``n``, ``B`` (per channel, ``(C, 1, ..)``), ``scale_float`` / ``shift_float`` (the float
              ``a_c``, ``b_c`` of ``y = a_c * x + b_c``, float32, for exports); attrs ``float_op``, ``eps``
mul           elementwise product of two integer tensors (size-1 dims broadcast) on the grid
              ``grid_a * grid_b``, or of one by a python scalar (attrs ``const``: the codes times
              ``sign``, ``|const|`` in the grid); attrs ``const`` (None for two tensors), ``sign``,
              ``shifts`` = [ka, kb] where two operands whose product would be wider than 48 bits are first
              rounded half up to fewer bits
              (``(x + 2**(k-1)) >> k``, grid ``grid_a * 2**ka * grid_b * 2**kb``; absent when none)
flatten       ``torch.flatten(x, 1)``; the grid is flattened with it
cat           concatenation along channels; attrs ``dim``
reshape       the codes in the same order under another per-sample shape (``view`` / ``reshape`` / ``unsqueeze``
              / ``squeeze``; a channel shuffle's split of the channels); attrs ``shape``
slice         a contiguous range ``[start, stop)`` of per-sample dim ``dim`` (a part of a ``chunk`` / ``split``,
              ``x[:, a:b]``, ``narrow``); attrs ``dim``, ``start``, ``stop``
transpose     the per-sample axes permuted (``permute`` / ``transpose``; the batch axis stays first):
              output axis ``i`` is input axis ``perm[i]``; attrs ``perm``
gather        ``torch.index_select`` of per-sample dim ``dim`` by a constant index; attrs ``dim``, ``index``
zeros         ``torch.zeros_like(x)``: zero codes of ``x``'s shape on its grid
pad           zero padding; attrs ``pads`` = [left, right, top, bottom], ``channel_pads`` = [front, back] (new
              zero channels; absent when none)
zero_insert   ``stride - 1`` zeros between pixels, ``extra`` zero rows / columns at the bottom / right
              (:class:`mixq.nn.ZeroInsert`); attrs ``stride``, ``extra``
pixel_shuffle channel ``c*r*r + i*r + j`` -> pixel ``(i, j)`` of channel ``c``; attrs ``factor``
upsample      nearest upsampling by integer factors: ``y[i, j] = x[i // kh, j // kw]``; attrs
              ``scale`` = [kh, kw], ``mode``
interp        bilinear interpolation as exact integers ``Wh @ x @ Ww^T`` on the grid
              ``grid / (Dh * Dw)`` (:mod:`mixq.engine.convert_ops`); arrays ``wh``, ``ww`` (integer
              weights, rows summing to ``Dh`` / ``Dw``); attrs ``denom``, ``align_corners``, ``size``, ``mode``
lut           lookup table ``table[x - in_qmin]`` (int codes on the grid ``act_scale``) of a ``QLutAct``;
              arrays ``table`` (``2**bits`` entries); attrs ``fn``, ``params`` (the float function),
              ``fmt`` / ``act_scale`` / ``qmin`` / ``qmax`` (its output quantizer), ``in_scale``,
              ``in_qmin``, ``in_qmax``
fbs           a conv gated per image (FBS, :mod:`mixq.engine.convert_fbs`): inputs (codes, gate codes); only the
              ``k`` largest nonzero gate codes' channels computed, ``acc * gate``; the conv's arrays and attrs
              plus ``acc_grid`` and ``k``
============= ====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixq.errors import ModelError

OPS = ("quantize", "requant", "conv", "linear", "clamp", "maxpool", "sumpool", "add", "reduce", "mul", "affine",
       "flatten", "cat", "reshape", "transpose", "slice", "zeros", "gather", "pad", "zero_insert", "pixel_shuffle",
       "upsample", "interp", "lut", "fbs")
COMPUTE_OPS = ("conv", "linear")
INT_MODEL_VERSION = 1


@dataclass(frozen=True, eq=False)
class IntNode:
    """One operation of the integer model (see the module docstring for the ops)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    scale: np.ndarray
    bound: int
    attrs: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ModelError(f"int model node {self.name!r}: unknown op {self.op!r} (known: {', '.join(OPS)})")

    @property
    def bits(self) -> int:
        """Width of a signed register holding this node's values (worst case)."""
        return int(self.bound).bit_length() + 1


def quantizer_behind(node: IntNode, lookup: Callable[[str], IntNode]) -> IntNode:
    """``node`` itself when it is a quantizer (``quantize`` / ``requant``, the nodes with a ``fmt``), else the
    quantizer before the data movement that follows it (on the float input, moves are replayed on the codes
    right after the first quantizer); ``lookup`` finds a node by name."""
    while "fmt" not in node.attrs and node.inputs:
        node = lookup(node.inputs[0])
    return node


@dataclass(frozen=True, eq=False)
class IntModel:
    """An integer network: nodes in execution order, one float input, one output node."""

    nodes: tuple[IntNode, ...]
    input_shape: tuple[int, ...]
    output: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = {"input"}
        for n in self.nodes:
            for i in n.inputs:
                if i not in seen:
                    raise ModelError(f"int model node {n.name!r}: input {i!r} is not produced before it")
            if n.name in seen:
                raise ModelError(f"int model: duplicate node name {n.name!r}")
            seen.add(n.name)
        if self.output not in seen:
            raise ModelError(f"int model: output {self.output!r} is not a node")

    def __iter__(self) -> Iterator[IntNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> IntNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ModelError(f"int model: no node named {name!r}")

    def input_quantizer(self, name: str) -> IntNode:
        """The ``quantize`` / ``requant`` node that feeds node ``name``: its input, or, when data movement on
        the float network input was replayed on the codes (pad, zero insertion ...), the quantizer before it."""
        return quantizer_behind(self.node(self.node(name).inputs[0]), self.node)

    def compute_nodes(self) -> list[IntNode]:
        return [n for n in self.nodes if n.op in COMPUTE_OPS]

    def accumulators(self) -> list[dict[str, Any]]:
        """Per conv/linear layer: worst-case accumulator width, the budget, and the formats."""
        out = []
        for n in self.compute_nodes():
            counts = np.bincount(n.arrays["row_format"].astype(np.int64), minlength=len(n.attrs["formats"]))
            out.append({
                "layer": n.name,
                "op": n.op,
                "acc_bits": int(n.attrs["acc_bits"]),
                "acc_budget": int(n.attrs["acc_budget"]),
                "saturate": bool(n.attrs["saturate"]),
                "dot_length": int(np.prod(n.arrays["weight"].shape[1:])),
                "rows": {_label(f): int(c) for f, c in zip(n.attrs["formats"], counts, strict=True) if c},
            })
        return out


def _label(fmt: Mapping[str, Any]) -> str:
    d = dict(fmt)
    kind = d.pop("kind")
    bits = d.pop("bits", "")
    extra = ",".join(f"{k}={v}" for k, v in d.items() if v not in (None, False))
    return f"{kind}{bits}" + (f"({extra})" if extra else "")
