"""Quantized torch model -> :class:`~mixq.engine.model.IntModel`.

``to_integer(qmodel, example)`` traces the fake-quant model (``QConv2d``,
``QLinear``, ``QAct``, ``QLutAct`` as leaves), and turns each node into integer ops
through one table of builders, :data:`BUILDERS` (compute layers, pooling and adds here;
clamps, lookup tables and upsampling in :mod:`mixq.engine.convert_ops`; data movement in
:mod:`mixq.engine.convert_shape`):

* a compute layer's input quantizer becomes ``quantize`` (for the float network
  input) or ``requant`` (from the producer's grid to the activation scale, with a
  dyadic multiplier per channel of the producer);
* the layer becomes ``conv`` / ``linear`` on integer weight codes (one format per
  row), with its bias rounded onto the accumulator grid ``s_act * s_w * 2**-frac``;
* ReLU / ReLU6 / Hardtanh become ``clamp``, pooling ``maxpool`` / ``sumpool``, a
  residual add ``add`` at the finer grid of its operands, a mean / max over the channels ``reduce``
  (on a common grid of the channels, as an add), a product of two tensors ``mul``, flatten / cat / reshape / pad /
  zero insertion / pixel shuffle / nearest upsampling move the grids with the codes,
  bilinear upsampling is ``interp`` on a finer grid, a ``QLutAct`` ``requant`` + ``lut``.

Every tensor between two quantizers stays an exact integer at the accumulator's
fine grid (the fake-quant model keeps it in float); values are only rounded where
the fake-quant model rounds (its activation quantizers, a lookup table's output grid)
and in residual adds of operands on different grids. Each compute layer's worst-case accumulator width is
checked against ``acc_bits``: over budget is a :class:`ModelError` (``overflow="error"``)
or a saturating accumulator (``overflow="saturate"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.engine import grids
from mixq.engine.arith import (
    DEFAULT_MULT_BITS,
    INT64_LIMIT,
    ROUNDING,
    dyadic_common,
    signed_bits,
)
from mixq.engine.context import Ctx, Val, capped, quant_input
from mixq.engine.convert_fbs import fbs_builder
from mixq.engine.convert_ops import EXACT_BITS, OP_BUILDERS, affine_of, channel_reduce, reduce_dims
from mixq.engine.convert_shape import SHAPE_BUILDERS
from mixq.engine.model import INT_MODEL_VERSION, IntModel, IntNode
from mixq.engine.trace import OpInfo, classify, fn_args, shape_of, tensor_args, trace
from mixq.errors import ModelError
from mixq.nn import QAct, QConv2d, QLinear

OVERFLOW_POLICIES = ("error", "saturate")
MAX_AUTO_FRAC_BITS = 8


@dataclass(frozen=True)
class EngineConfig:
    """How a quantized model becomes integer: multiplier width, accumulator budget, overflow policy.

    ``acc_bits`` is the accumulator width the hardware provides, one number for
    every layer or a map from layer name to width (missing layers get 32).
    ``acc_frac_bits``: fractional bits of the accumulator below the product grid (the
    products enter it shifted left by that much), so the bias is kept ``2**g`` times
    finer than ``s_act * s_w``; ``None`` uses what the budget leaves, up to
    ``MAX_AUTO_FRAC_BITS``. ``add_guard_bits``: a residual sum is kept at least that
    many bits finer than its coarser operand. ``sum_bits``: a residual sum or an unfolded BatchNorm
    whose exact result would be wider (a residual stream kept on accumulator grids through many adds)
    takes a coarser output grid, by powers of two, so that it fits this many bits. ``pool_bits``: an average
    pool whose exact window sums would be wider (a wide product pooled over a whole map) rounds its input half up
    to fewer bits first, so that they fit this many bits.
    """

    mult_bits: int = DEFAULT_MULT_BITS
    acc_bits: int | Mapping[str, int] = 32
    overflow: str = "error"
    add_guard_bits: int = 8
    acc_frac_bits: int | None = None
    sum_bits: int = 40
    pool_bits: int = EXACT_BITS

    def __post_init__(self) -> None:
        if not isinstance(self.mult_bits, int) or not 2 <= self.mult_bits <= 31:
            raise ModelError(f"engine.mult_bits: must be an integer in [2, 31], got {self.mult_bits!r}")
        if not isinstance(self.add_guard_bits, int) or not 0 <= self.add_guard_bits <= 24:
            raise ModelError(f"engine.add_guard_bits: must be an integer in [0, 24], got {self.add_guard_bits!r}")
        if self.acc_frac_bits is not None and (
                not isinstance(self.acc_frac_bits, int) or not 0 <= self.acc_frac_bits <= 24):
            raise ModelError(f"engine.acc_frac_bits: must be an integer in [0, 24] or None, got {self.acc_frac_bits!r}")
        for key in ("sum_bits", "pool_bits"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 16 <= v <= 52:
                raise ModelError(f"engine.{key}: must be an integer in [16, 52], got {v!r}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ModelError(f"engine.overflow: {self.overflow!r} is not one of {', '.join(OVERFLOW_POLICIES)}")
        budgets = self.acc_bits.values() if isinstance(self.acc_bits, Mapping) else [self.acc_bits]
        for b in budgets:
            if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 63:
                raise ModelError(f"engine.acc_bits: widths must be integers in [2, 63], got {b!r}")

    def budget(self, layer: str) -> int:
        if isinstance(self.acc_bits, Mapping):
            return int(self.acc_bits.get(layer, 32))
        return int(self.acc_bits)


def to_integer(qmodel: nn.Module, example: torch.Tensor | tuple[int, ...], *,
               config: EngineConfig | None = None, **options: Any) -> IntModel:
    """The integer model of a calibrated fake-quant model.

    ``example`` is an input batch (or a per-sample shape ``(C, H, W)``) used only for
    shapes. ``options`` are :class:`EngineConfig` fields (``mult_bits``, ``acc_bits``,
    ``overflow``). Raises :class:`ModelError` naming the first layer (and its type) the
    engine does not support.
    """
    cfg = config if config is not None else EngineConfig(**options)
    ex = torch.zeros(1, *example) if isinstance(example, tuple) else example[:1].detach()
    gm = trace(qmodel, ex)
    kinds = classify(gm)
    ctx = Ctx(gm, cfg)
    out_val: Val | None = None
    node_map: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if any(v is not None and v.node == "input" for v in ctx.env.values()):
                raise ModelError(f"integer engine: the model takes more than one input ({node.name!r})")
            ctx.env[node] = Val("input", True, np.array(1.0), 0, shape_of(node))
        elif node.op == "output":
            out_val = _output(ctx, node)
        else:
            info = kinds[node]
            v = ctx.env[node] = BUILDERS[info.kind](ctx, node, info)
            if v is not None:
                node_map[node.name] = v.node
    assert out_val is not None
    meta = {"format": "mixq-int-model", "version": INT_MODEL_VERSION, "rounding": ROUNDING,
            "mult_bits": cfg.mult_bits, "overflow": cfg.overflow, "model": type(qmodel).__name__,
            "fx_nodes": node_map}
    return IntModel(tuple(ctx.nodes), tuple(int(d) for d in ex.shape[1:]), out_val.node, meta)


def _output(ctx: Ctx, node: fx.Node) -> Val:
    arg = node.args[0]
    if isinstance(arg, list | tuple):
        if len(arg) != 1:
            raise ModelError(f"integer engine: the model returns {len(arg)} outputs; one is supported")
        arg = arg[0]
    v = ctx.env.get(arg) if isinstance(arg, fx.Node) else None
    if v is None or v.is_float:
        raise ModelError("integer engine: the model output is not computed by quantized layers")
    return v


# ----------------------------------------------------------------------------- quantizers


def _qact(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    assert isinstance(info.module, QAct)
    return quant_input(ctx, ctx.arg(node, info), info.module, info.name, info)


def _weight_codes(m: QConv2d | QLinear, info: OpInfo) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(int codes of every row in its own format, row format index, per-row scale)."""
    if not m.formats:
        raise ModelError(f"layer {info.name!r} ({info.type}): its weights are not quantized (plan weight=None)")
    w = m.weight.detach()
    scheme = m.row_scheme.detach().to(torch.long)
    rows = w.shape[0]
    codes = torch.zeros_like(w, dtype=torch.int64)
    shape = (rows,) + (1,) * (w.dim() - 1)
    for i, fmt in enumerate(m.formats):
        q = fmt.quantize(w, m.w_scales[i])
        codes = torch.where((scheme == i).reshape(shape), q, codes)
    w_scale = m.w_scales.detach().reshape(len(m.formats), rows, -1)[:, :, 0]
    per_row = w_scale[scheme, torch.arange(rows)].to(torch.float64).numpy()
    return codes, scheme.numpy().astype(np.int8), per_row


def _layer(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    m = info.module
    assert isinstance(m, QConv2d | QLinear)
    v = ctx.arg(node, info)
    if isinstance(m, QLinear) and len(v.shape) != 1:
        raise ModelError(f"layer {info.name!r} ({info.type}): input of shape {v.shape} per sample; "
                         "the engine supports linear layers on flat (N, features) inputs")
    x = quant_input(ctx, v, m.input_quant, f"{info.name}.input_quant", info)
    codes, row_format, s_w = _weight_codes(m, info)
    s_prod = float(x.scale) * m.row_steps().numpy()  # the grid of the products w * x
    bias_f = (m.bias.detach().to(torch.float64).numpy() if m.bias is not None else np.zeros(len(s_w)))
    row_abs = codes.abs().reshape(codes.shape[0], -1).sum(1).tolist()
    budget = ctx.cfg.budget(info.name)
    g = ctx.cfg.acc_frac_bits
    if g is None:  # fractional accumulator bits: what the budget leaves, up to MAX_AUTO_FRAC_BITS
        base = max(row_abs) * x.bound + float(np.abs(bias_f / s_prod).max(initial=0)) + 1
        g = max(0, min(MAX_AUTO_FRAC_BITS, budget - signed_bits(int(base))))
    s_acc = np.ldexp(s_prod, -g)
    bias = np.rint(bias_f / s_acc)
    if np.abs(bias).max(initial=0) >= INT64_LIMIT:
        raise ModelError(f"layer {info.name!r} ({info.type}): bias too large for its accumulator grid")
    bias = bias.astype(np.int64)
    bound = max((int(a) * x.bound << g) + abs(int(b)) for a, b in zip(row_abs, bias.tolist(), strict=True))
    acc_bits = signed_bits(bound)
    where = f"layer {info.name!r} ({info.type})"
    if bound >= INT64_LIMIT:
        raise ModelError(f"{where}: accumulator needs {acc_bits} bits, beyond the engine's int64")
    saturate = acc_bits > budget
    if saturate and ctx.cfg.overflow == "error":
        raise ModelError(f"{where}: accumulator needs {acc_bits} bits in the worst case (|acc| <= {bound}), "
                         f"the budget is {budget} bits; widen acc_bits (--acc-bits) or use overflow='saturate' "
                         "(--overflow saturate)")
    out_bound = min(bound, 2 ** (budget - 1)) if saturate else bound
    attrs: dict[str, Any] = {"formats": [f.to_dict() for f in m.formats], "acc_bits": acc_bits,
                             "acc_budget": budget, "acc_frac_bits": g, "saturate": saturate,
                             "has_bias": m.bias is not None}
    if isinstance(m, QConv2d):
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise ModelError(f"{where}: padding {m.padding!r} / mode {m.padding_mode!r}; "
                             "the engine supports explicit zero padding")
        attrs.update(stride=list(m.stride), padding=list(m.padding), dilation=list(m.dilation), groups=m.groups)
        grid = s_acc.reshape(-1, 1, 1)
        op = "conv"
    else:
        grid = s_acc
        op = "linear"
    arrays = {"weight": codes.numpy(), "row_format": row_format, "bias": bias, "w_scale": s_w,
              "bias_float": bias_f.astype(np.float32)}
    return ctx.add(IntNode(info.name, op, (x.node,), shape_of(node), grid, out_bound, attrs, arrays,
                           f"{info.name} ({info.type})"))


# ----------------------------------------------------------------------------- pooling and adds


def _pair(x: Any) -> list[int]:
    return [int(x), int(x)] if isinstance(x, int) else [int(a) for a in x]


def _spatial_grid(v: Val, info: OpInfo) -> None:
    if v.scale.ndim == 3 and (v.scale.shape[1] != 1 or v.scale.shape[2] != 1):
        raise ModelError(f"layer {info.name!r} ({info.type}): pooling over a grid that varies in space")
    if len(v.shape) != 3:
        raise ModelError(f"layer {info.name!r} ({info.type}): pooling needs (C, H, W) inputs, got {v.shape}")


def _maxpool(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.int_arg(node, info)
    _spatial_grid(v, info)
    if info.module is not None:
        mod: Any = info.module
        a = {"kernel_size": mod.kernel_size, "stride": mod.stride, "padding": mod.padding,
             "dilation": mod.dilation, "ceil_mode": mod.ceil_mode, "return_indices": mod.return_indices}
    else:
        a = fn_args(node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                    {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
    if a["return_indices"]:
        raise ModelError(f"layer {info.name!r} ({info.type}): return_indices is not supported")
    k = _pair(a["kernel_size"])
    attrs = {"kernel": k, "stride": _pair(a["stride"]) if a["stride"] not in (None, []) else k,
             "padding": _pair(a["padding"]), "dilation": _pair(a["dilation"]), "ceil_mode": bool(a["ceil_mode"])}
    return ctx.add(IntNode(info.name, "maxpool", (v.node,), shape_of(node), v.scale, v.bound, attrs, {},
                           f"{info.name} ({info.type})"))


def _sumpool(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.int_arg(node, info)
    _spatial_grid(v, info)
    where = f"layer {info.name!r} ({info.type})"
    _, h, w = v.shape
    keepdim, ceil = True, False
    divisors: np.ndarray | None = None  # an average pool's divisor per output pixel, where it varies
    if info.kind == "avgpool":
        if info.module is not None:
            mod: Any = info.module
            a = {"kernel_size": mod.kernel_size, "stride": mod.stride, "padding": mod.padding,
                 "ceil_mode": mod.ceil_mode, "count_include_pad": mod.count_include_pad,
                 "divisor_override": mod.divisor_override}
        else:
            a = fn_args(node, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                               "divisor_override"),
                        {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                         "divisor_override": None})
        k = _pair(a["kernel_size"])
        stride = _pair(a["stride"]) if a["stride"] not in (None, []) else k
        pad = _pair(a["padding"])
        ceil = bool(a["ceil_mode"])
        count = int(a["divisor_override"] or k[0] * k[1])
        if not a["divisor_override"] and (ceil or (any(pad) and not a["count_include_pad"])):
            divisors = _divisors(shape_of(node)[-2:], (h, w), k, stride, pad, ceil, bool(a["count_include_pad"]))
        float_op: dict[str, Any] = {"op": "avgpool", "count_include_pad": bool(a["count_include_pad"])}
    elif info.kind == "adaptive_avgpool":
        mod_a: Any = info.module
        size: Any = mod_a.output_size if mod_a is not None else fn_args(
            node, ("input", "output_size"), {})["output_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        oh, ow = (h if size[0] is None else int(size[0])), (w if size[1] is None else int(size[1]))
        if h % oh or w % ow:
            raise ModelError(f"{where}: adaptive pooling {h}x{w} -> {oh}x{ow} has unequal windows")
        k = stride = [h // oh, w // ow]
        pad = [0, 0]
        count = k[0] * k[1]
        float_op = {"op": "global_avgpool" if (oh, ow) == (1, 1) else "avgpool", "count_include_pad": True}
    else:  # mean
        a = fn_args(node, ("input", "dim", "keepdim"), {"keepdim": False})
        dim_arg: Any = a.get("dim")
        dims = sorted(int(d) % 4 for d in (dim_arg if isinstance(dim_arg, list | tuple) else [dim_arg]))
        if dims != [2, 3]:
            raise ModelError(f"{where}: mean over dims {a.get('dim')}; the engine supports the channels (1) and the "
                             "spatial dims (2, 3)")
        k = stride = [h, w]
        pad = [0, 0]
        count = h * w
        keepdim = bool(a["keepdim"])
        float_op = {"op": "global_avgpool", "count_include_pad": True}
    # a window sum that would pass EXACT_BITS (a wide product, e.g. a swish x * sigmoid(x) on the accumulator
    # grid, pooled over a whole map) rounds its input half up to fewer bits first
    # (a window sums k[0] * k[1] values at most, whatever its divisor)
    shift, bound, size = 0, v.bound, k[0] * k[1]
    while signed_bits(bound * size) > ctx.cfg.pool_bits and bound > 1:
        shift += max(1, signed_bits(bound * size) - ctx.cfg.pool_bits)
        bound = (v.bound + (1 << shift >> 1)) >> shift
    if divisors is not None and np.all(divisors == divisors.flat[0]):  # one divisor after all
        count, divisors = int(divisors.flat[0]), None
    if divisors is None:
        grid = np.ldexp(v.scale, shift) / count
    else:  # the grid varies by output pixel: the window sum over its own divisor
        grid = grids.compact(np.ldexp(grids.full(v.scale, shape_of(node)), shift) / divisors)
    if not keepdim:
        grid = grid.reshape(-1) if grid.ndim else grid
    attrs = {"kernel": k, "stride": stride, "padding": pad, "count": count, "keepdim": keepdim,
             "count_include_pad": float_op["count_include_pad"], "float_op": float_op["op"], "ceil_mode": ceil}
    if shift:
        attrs["shift"] = shift
    if divisors is not None:
        attrs["divisors"] = divisors.astype(int).tolist()
    return ctx.add(IntNode(info.name, "sumpool", (v.node,), shape_of(node), grid, bound * size, attrs, {},
                           f"{info.name} ({info.type})"))


def _divisors(out_hw: tuple[int, ...], in_hw: tuple[int, int], k: list[int], stride: list[int], pad: list[int],
              ceil: bool, count_include_pad: bool) -> np.ndarray:
    """An average pool's divisor at each output pixel ``(H_out, W_out)``, as torch divides: the window clipped to the
    padded map in ceil mode, and without the padding where ``count_include_pad`` is off."""
    ones = torch.ones(1, 1, *in_hw, dtype=torch.float64)
    args = (k, stride, pad, ceil)
    taken = F.avg_pool2d(ones, *args, count_include_pad=count_include_pad)[0, 0].numpy()
    summed = F.avg_pool2d(ones, *args, divisor_override=1)[0, 0].numpy()
    if taken.shape != tuple(out_hw) or np.any(taken <= 0):
        raise ModelError(f"average pool {k} / {stride} / {pad}: windows without an input pixel")
    return np.rint(summed / taken)


def _mean(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """A mean over the channels (a ``reduce``, :mod:`mixq.engine.convert_ops`) or the spatial dims (a ``sumpool``)."""
    dims, _ = reduce_dims(node, info, ctx.int_arg(node, info))
    return channel_reduce(ctx, node, info, "sum") if dims == [1] else _sumpool(ctx, node, info)


def _add(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    ins = tensor_args(node)
    if len(ins) == 1 and len(node.args) == 2 and not node.kwargs:  # x + 3.0: an affine map with a = 1
        c = node.args[1] if node.args[0] is ins[0] else node.args[0]
        if isinstance(c, int | float) and not isinstance(c, bool) and np.isfinite(c):
            v = ctx.int_arg(node, info)
            ch = v.shape[0] if v.shape else 1
            return affine_of(ctx, info, v, np.ones(ch), np.full(ch, float(c)), {"float_op": "add_const", "eps": 0.0})
    if len(ins) != 2 or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        raise ModelError(f"layer {info.name!r} ({info.type}): only the sum of two tensors or of a tensor and a python "
                         "number is supported")
    a, b = ctx.int_operands(ins, info, "add of the float network input or a constant")
    out_shape = shape_of(node)
    if a.shape != out_shape or b.shape != out_shape:
        raise ModelError(f"layer {info.name!r} ({info.type}): broadcasting add {a.shape} + {b.shape}")
    sa, sb = np.broadcast_arrays(a.scale, b.scale)

    def rescaled(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        (ma, mb), n = dyadic_common([sa / grid, sb / grid], ctx.cfg.mult_bits)
        top = a.bound * int(ma.max()) + b.bound * int(mb.max()) + 2 ** int(n.max())
        bound = max(((a.bound * int(x) + b.bound * int(y)) >> int(s)) + 1
                    for x, y, s in zip(ma.reshape(-1), mb.reshape(-1), n.reshape(-1), strict=True))
        return ma, mb, n, top, bound

    # the output grid: at least add_guard_bits finer than the coarser operand, never coarser than the
    # finer one (a chain of adds settles instead of shrinking the grid at every add), unless the sum
    # would not fit sum_bits: then coarser by powers of two
    grid = capped(np.minimum(np.minimum(sa, sb), np.ldexp(np.maximum(sa, sb), -ctx.cfg.add_guard_bits)),
                  lambda g: rescaled(g)[4], ctx.cfg.sum_bits)
    ma, mb, n, top, bound = rescaled(grid)
    if top >= INT64_LIMIT:
        raise ModelError(f"layer {info.name!r} ({info.type}): rescaled sum needs more than 62 bits; lower mult_bits")
    return ctx.add(IntNode(info.name, "add", (a.node, b.node), out_shape, np.array(grid, dtype=np.float64), bound,
                           {}, {"M": np.stack([ma, mb]), "n": n}, f"{info.name} ({info.type})"))


BUILDERS: dict[str, Callable[[Ctx, fx.Node, OpInfo], Val | None]] = {
    "qconv": _layer, "qlinear": _layer, "qact": _qact,
    "maxpool": _maxpool, "avgpool": _sumpool, "adaptive_avgpool": _sumpool, "mean": _mean, "add": _add,
    **OP_BUILDERS, **SHAPE_BUILDERS, "fbs": fbs_builder(_layer),
}

