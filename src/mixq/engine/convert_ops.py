"""Builders of element-wise ops and of interpolation: clamps (ReLU / ReLU6 / Hardtanh and
``Hardtanh`` subclasses with per-channel bounds such as CLE's clipped ReLU6), lookup-table
activations (``QLutAct``), BatchNorm left unfolded (an integer affine per channel), and upsampling
(nearest: data movement, :mod:`mixq.engine.convert_shape`; bilinear: an exact linear op on a finer grid).

**Bilinear interpolation** is linear with rational weights. Per axis, torch's source index is
``src = s * (dst + 1/2) - 1/2`` clamped at 0 (``align_corners=False``, ``s`` = 1 / scale factor,
or in / out when a size is given) or ``src = dst * (in - 1) / (out - 1)`` (``align_corners=True``);
``i0 = min(floor(src), in - 1)``, ``i1 = min(i0 + 1, in - 1)``, ``l1 = src - i0`` clamped to
``[0, 1]``, weights ``1 - l1`` on ``i0`` and ``l1`` on ``i1``. Computed in exact fractions, every
weight of an axis is a multiple of ``1 / D`` (scale 2, ``align_corners=False``: ``D = 4``, weights
``{0, 1, 3, 4} / 4``; ``align_corners=True``: ``D = (out - 1) / gcd(in - 1, out - 1)``). The engine
computes ``Wh @ x @ Ww^T`` with the integer matrices ``D * W``: the output is an exact integer
on the grid ``grid / (Dh * Dw)`` with bound ``bound * Dh * Dw`` — no rounding. Interpolations
whose ``Dh * Dw`` exceeds :data:`MAX_INTERP_DENOM` (non-integer scale factors) are refused.

**Channel reductions** (``torch.mean`` / ``torch.amax`` over dim 1, as ONNX ReduceMean / ReduceMax
import): channels on one grid are reduced as they are — the max of the codes, or their *sum* on the
grid ``grid / C`` (the 1/C moves into the grid, no rounding); channels on different grids (per-channel
weights) are first brought onto one common grid, as a residual add does (at least ``add_guard_bits``
finer than the coarsest channel, never coarser than the finest), with multipliers ``M_c`` sharing one
shift ``n`` and one rounding after the reduction: ``(R_c(x_c * M_c) + 2**(n-1)) >> n`` (round half up;
for the max, rounding after equals rounding before, both are monotonic). ``amax`` over the spatial dims
(2, 3) is a global max pool.

**BatchNorm** that the front end cannot fold (after a ReLU or a pool: CREPE, pre-activation ResNets), in
eval semantics ``y = a_c * x + b_c`` (``a_c = gamma / sqrt(var + eps)``, ``b_c = beta - mean * a_c``), is an
``affine`` node: one output grid ``g`` chosen as an add chooses it (at least ``add_guard_bits`` finer than the
coarsest ``|a_c| * grid_c``, never coarser than the finest), a signed dyadic ``M_c * 2**-n_c ~ a_c * grid_c / g``
(``mult_bits`` bits, negative for a negative gamma), the shift ``B_c = rint(b_c / g)`` on the output grid, and
one rounding: ``y = round_half_up(x * M_c / 2**n_c + B_c) = ((x * M_c + 2**(n_c-1)) >> n_c) + B_c``.

**Elementwise products** (``x * g``, ``torch.mul``; an attention gate ``g`` of shape ``(1, H, W)``
broadcast over the channels, or equal shapes): the exact integer product of the codes on the grid
``grid_a * grid_b`` with bound ``bound_a * bound_b`` (refused beyond int64's 62 bits). A product by a
python scalar ``c != 0`` is exact too: the codes stay (negated for ``c < 0``) and ``|c|`` moves into
the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.engine import grids
from mixq.engine.arith import INT64_LIMIT, dyadic, dyadic_array, round_half_up, signed_bits
from mixq.engine.context import Ctx, Val, capped, quant_input, where
from mixq.engine.convert_shape import image, nearest, scale_factors, upsample_args
from mixq.engine.model import IntNode
from mixq.engine.trace import OpInfo, fn_args, shape_of, tensor_args
from mixq.errors import ModelError
from mixq.nn import QLutAct

MAX_INTERP_DENOM = 2**12


# ----------------------------------------------------------------------------- clamps


def _channel_limit(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A scalar limit, or a per-channel tensor (dim 1 of the batch) shaped to broadcast over ``shape``."""
    a = value.detach().to(torch.float64).numpy() if isinstance(value, torch.Tensor) else np.asarray(
        float(value), dtype=np.float64)
    if a.size == 1:
        return np.asarray(a.reshape(()), dtype=np.float64)
    if a.ndim != 1 or a.shape[0] != shape[0]:
        raise ValueError(f"{a.shape[0] if a.ndim == 1 else a.shape} bounds for {shape[0]} channels")
    return a.reshape((shape[0],) + (1,) * (len(shape) - 1))


def clamp_limits(node: fx.Node, info: OpInfo, shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Real limits (float64, scalar or per channel; ``None`` = unbounded) of a ReLU / ReLU6 / Hardtanh.

    A ``Hardtanh`` subclass may hold per-channel bounds as tensors ``lower`` / ``upper`` (CLE's clipped
    ReLU6: ``min(relu(x), upper)``); its forward is checked against the clamp on probe inputs.
    """
    if info.kind == "relu":
        return np.asarray(0.0), None
    if info.kind == "relu6":
        return np.asarray(0.0), np.asarray(6.0)
    mod: Any = info.module
    if info.kind == "clamp":  # torch.clamp / Tensor.clamp / clip (input, min, max): python numbers or None
        a = fn_args(node, ("input", "min", "max"), {"min": None, "max": None})
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
               for v in (a["min"], a["max"])):
            raise ModelError(f"{where(info)}: limits {a['min']!r}, {a['max']!r}; the engine takes python numbers")
        return tuple(None if a[k] is None else np.asarray(float(a[k])) for k in ("min", "max"))  # type: ignore[return-value]
    if mod is None:
        a = fn_args(node, ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0})
        return np.asarray(float(a["min_val"])), np.asarray(float(a["max_val"]))
    lower, upper = getattr(mod, "lower", mod.min_val), getattr(mod, "upper", mod.max_val)
    try:
        lo, hi = _channel_limit(lower, shape), _channel_limit(upper, shape)
    except ValueError as e:
        raise ModelError(f"{where(info)}: per-channel bounds do not fit its input {shape}: {e}") from None
    if type(mod) not in (nn.ReLU, nn.ReLU6, nn.Hardtanh):
        _check_clamp(mod, lo, hi, shape, info)
    return lo, hi


@torch.no_grad()
def _check_clamp(mod: Any, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...], info: OpInfo) -> None:
    """A Hardtanh subclass must compute ``clamp(x, lower, upper)``: compared on 65 values per channel."""
    ext = 2.0 * max(float(np.abs(lo).max()), float(np.abs(hi).max()), 1.0)
    probe = (shape[0],) + (1,) * (len(shape) - 1)
    x = torch.linspace(-ext, ext, 65).reshape((65,) + (1,) * len(shape)).expand((65, *probe)).contiguous()
    lo_t = torch.from_numpy(np.asarray(lo)).to(torch.float32)
    hi_t = torch.from_numpy(np.asarray(hi)).to(torch.float32)
    ref = torch.minimum(torch.maximum(x, lo_t), hi_t)
    try:
        y = mod(x)
    except Exception as e:  # a forward that does not run on the probe is not a clamp either
        raise ModelError(f"{where(info)}: its forward fails on a probe input ({e})") from None
    if not torch.equal(y, ref):
        raise ModelError(f"{where(info)}: a Hardtanh subclass whose forward is not clamp(x, lower, upper); "
                         "not supported by the integer engine")


def _real_attr(a: np.ndarray | None) -> float | None:
    return None if a is None or a.ndim else float(a)


def _clamp(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.int_arg(node, info)
    lo_r, hi_r = clamp_limits(node, info, v.shape)
    arrays: dict[str, np.ndarray] = {}
    lo_b, hi_b = -v.bound, v.bound
    if lo_r is not None:
        arrays["lo"] = round_half_up(lo_r / v.scale)
        lo_b = max(lo_b, int(arrays["lo"].min()))
    if hi_r is not None:
        arrays["hi"] = round_half_up(hi_r / v.scale)
        hi_b = min(hi_b, int(arrays["hi"].max()))
    for key, lim in (("lo_float", lo_r), ("hi_float", hi_r)):
        if lim is not None and lim.ndim:  # per-channel limits, as the float model holds them (exports)
            arrays[key] = lim.astype(np.float32)
    bound = max(abs(lo_b), abs(hi_b))
    attrs = {"lo_real": _real_attr(lo_r), "hi_real": _real_attr(hi_r), "float_op": info.kind}
    return ctx.add(IntNode(info.name, "clamp", (v.node,), v.shape, v.scale, bound, attrs, arrays,
                           f"{info.name} ({info.type})"))


# ----------------------------------------------------------------------------- lookup tables


def _qlut(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """``QLutAct``: its input quantizer (``quantize`` / ``requant``), then the ``lut`` of its table."""
    mod = info.module
    assert isinstance(mod, QLutAct)
    x = quant_input(ctx, ctx.arg(node, info), mod.input_quant, f"{info.name}.input_quant", info)
    codes, s_out = mod.table()
    table = codes.numpy().astype(np.int64)
    out = mod.out_fmt
    attrs = {"fn": mod.fn_name, "params": dict(mod.fn_params), "fmt": out.to_dict(), "act_scale": float(s_out),
             "qmin": out.qmin, "qmax": out.qmax, "in_scale": float(mod.input_quant.scale),
             "in_qmin": mod.in_fmt.qmin, "in_qmax": mod.in_fmt.qmax}
    grid = np.array(float(s_out), dtype=np.float64)
    return ctx.add(IntNode(info.name, "lut", (x.node,), x.shape, grid, int(np.abs(table).max(initial=0)), attrs,
                           {"table": table}, f"{info.name} ({info.type})"))


def _lut(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    how = "the module" if info.module is not None else "a module (nn.Sigmoid, nn.Hardswish ...) instead"
    what = info.type if info.module is not None or info.type.startswith("Tensor.") else f"function {info.type}"
    raise ModelError(f"layer {info.name!r} ({what}): an activation without a lookup-table quantizer; the integer "
                     f"engine computes it as a table on quantized inputs: write it as {how} and quantize with "
                     "activation formats (mixq.graph.convert.to_quantized wraps it in a QLutAct)")


# ----------------------------------------------------------------------------- interpolation


def linear_weights(n_in: int, n_out: int, align_corners: bool, scale_factor: float | None) -> tuple[np.ndarray, int]:
    """``(W, D)``: the ``(n_out, n_in)`` integer matrix ``D * weights`` of torch's linear interpolation along
    one axis (see the module docstring), ``D`` the least common denominator.

    >>> w, d = linear_weights(3, 6, False, 2.0)
    >>> d, w.tolist()[:3]
    (4, [[4, 0, 0], [3, 1, 0], [1, 3, 0]])
    """
    if align_corners:
        scale = Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
    else:
        scale = 1 / Fraction(scale_factor) if scale_factor is not None else Fraction(n_in, n_out)
    rows: list[list[Fraction]] = []
    for d in range(n_out):
        src = scale * d if align_corners else max(scale * (d + Fraction(1, 2)) - Fraction(1, 2), Fraction(0))
        i0 = min(math.floor(src), n_in - 1)
        l1 = min(max(src - i0, Fraction(0)), Fraction(1))
        row = [Fraction(0)] * n_in
        row[i0] += 1 - l1
        row[min(i0 + 1, n_in - 1)] += l1
        rows.append(row)
    den = math.lcm(*[w.denominator for r in rows for w in r])
    return np.array([[int(w * den) for w in r] for r in rows], dtype=np.int64), den


def _interp(ctx: Ctx, node: fx.Node, info: OpInfo, v: Val, a: dict[str, Any]) -> Val:
    if not grids.is_channel_grid(v.scale):
        raise ModelError(f"{where(info)}: bilinear interpolation of a grid that varies in space "
                         "(channels on different grids after a pixel shuffle)")
    out = shape_of(node)
    (_, h, w), (_, oh, ow) = v.shape, out
    ac = bool(a["align_corners"])
    fh, fw = scale_factors(a)
    wh, dh = linear_weights(h, oh, ac, fh)
    ww, dw = linear_weights(w, ow, ac, fw)
    if dh * dw > MAX_INTERP_DENOM:
        raise ModelError(f"{where(info)}: bilinear {h}x{w} -> {oh}x{ow} (scale {a['scale_factor']}, align_corners "
                         f"{ac}) has weights on a grid of 1/{dh * dw}; the engine supports integer scale factors "
                         f"and sizes whose weights are multiples of 1/{MAX_INTERP_DENOM} at most")
    bound = v.bound * dh * dw
    if bound >= INT64_LIMIT:
        raise ModelError(f"{where(info)}: interpolated values need more than 62 bits")
    attrs = {"mode": "bilinear", "align_corners": ac, "denom": [dh, dw], "size": [oh, ow],
             "scale_factor": None if fh is None or fw is None else [fh, fw]}
    return ctx.add(IntNode(info.name, "interp", (v.node,), out, v.scale / (dh * dw), bound, attrs,
                           {"wh": wh, "ww": ww}, f"{info.name} ({info.type})"))


def _upsample(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.arg(node, info)
    image(v, info)
    a = upsample_args(node, info)
    if v.is_float and a["mode"] not in ("nearest", "nearest-exact"):
        raise ModelError(f"{where(info)}: {a['mode']} upsampling of the float network input; the integer engine "
                         "needs a quantizer first (nearest upsampling is data movement and is accepted)")
    if a["antialias"]:
        raise ModelError(f"{where(info)}: antialiased interpolation is not supported by the integer engine")
    if a["mode"] == "bilinear":
        return _interp(ctx, node, info, v, a)
    if a["mode"] in ("nearest", "nearest-exact"):
        return nearest(ctx, node, info, v, a)
    raise ModelError(f"{where(info)}: interpolation mode {a['mode']!r}; the engine supports nearest "
                     "(integer factors) and bilinear")


# ----------------------------------------------------------------------------- reductions and products


def reduce_dims(node: fx.Node, info: OpInfo, v: Val) -> tuple[list[int], bool]:
    """The reduced dims (of the batched tensor, sorted, non-negative) and ``keepdim`` of a mean / amax."""
    a = fn_args(node, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
    if a["dim"] is None or a.get("dtype") is not None:
        raise ModelError(f"{where(info)}: {info.kind} without a dim (or with a dtype); give the dims to reduce")
    rank = len(v.shape) + 1
    dims = a["dim"] if isinstance(a["dim"], list | tuple) else [a["dim"]]
    return sorted({int(d) % rank for d in dims}), bool(a["keepdim"])


def channel_reduce(ctx: Ctx, node: fx.Node, info: OpInfo, fn: str) -> Val:
    """``mean`` (``fn="sum"``) or ``amax`` (``fn="max"``) over the channels (dim 1): a ``reduce`` node."""
    v = ctx.int_arg(node, info)
    _, keepdim = reduce_dims(node, info, v)
    if len(v.shape) < 2:
        raise ModelError(f"{where(info)}: a channel reduction needs (C, ...) inputs, got {v.shape}")
    if not grids.is_channel_grid(v.scale):
        raise ModelError(f"{where(info)}: a channel reduction of a grid that varies in space "
                         "(channels on different grids after a pixel shuffle)")
    c = v.shape[0]
    g = grids.channels(v.scale, v.shape).reshape(-1)
    if np.all(g == g[0]):  # one grid: the codes as they are
        grid, m, n = float(g[0]), np.ones(c, dtype=np.int64), 0
    else:  # a common grid as a residual add chooses it, one shift for every channel
        grid = float(min(g.min(), np.ldexp(g.max(), -ctx.cfg.add_guard_bits)))
        ratios = g / grid
        _, n = dyadic(float(ratios.max()), ctx.cfg.mult_bits)
        m = np.rint(np.ldexp(ratios, n)).astype(np.int64)
    terms = c if fn == "sum" else 1
    if v.bound * int(m.max()) * terms + 2**n >= INT64_LIMIT:
        raise ModelError(f"{where(info)}: the rescaled channel {info.kind} needs more than 62 bits; lower mult_bits")
    half = 2 ** (n - 1) if n else 0
    bound = ((v.bound * int(m.sum()) + half) >> n) if fn == "sum" else max(
        (v.bound * int(mc) + half) >> n for mc in m.tolist())
    out_grid = np.array(grid / c if fn == "sum" else grid, dtype=np.float64)
    attrs = {"fn": fn, "dim": 1, "keepdim": keepdim, "count": c, "float_op": info.kind}
    arrays = {"M": m.reshape((c,) + (1,) * (len(v.shape) - 1)), "n": np.array(n, dtype=np.int64)}
    return ctx.add(IntNode(info.name, "reduce", (v.node,), shape_of(node), out_grid, int(bound), attrs, arrays,
                           f"{info.name} ({info.type})"))


def _amax(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """``amax`` over the channels (a ``reduce``) or over the spatial dims (a global ``maxpool``)."""
    v = ctx.int_arg(node, info)
    dims, keepdim = reduce_dims(node, info, v)
    if dims == [1]:
        return channel_reduce(ctx, node, info, "max")
    if dims != [2, 3] or len(v.shape) != 3:
        raise ModelError(f"{where(info)}: amax over dims {dims} of a {v.shape} input; the engine supports the "
                         "channels (1) or the spatial dims (2, 3)")
    if v.scale.ndim and not grids.is_channel_grid(v.scale):
        raise ModelError(f"{where(info)}: pooling over a grid that varies in space")
    c, h, w = v.shape
    attrs = {"kernel": [h, w], "stride": [h, w], "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}
    src = f"{info.name} ({info.type})"
    pool = ctx.add(IntNode(info.name if keepdim else f"{info.name}.pool", "maxpool", (v.node,), (c, 1, 1), v.scale,
                           v.bound, attrs, {}, src))
    if keepdim:
        return pool
    flat = v.scale.reshape(-1) if v.scale.ndim else v.scale
    return ctx.add(IntNode(info.name, "flatten", (pool.node,), shape_of(node), flat, v.bound, {"start_dim": 1}, {},
                           src))


def _operands(node: fx.Node) -> tuple[Any, Any]:
    a = fn_args(node, ("input", "other"), {})
    if "input" not in a or "other" not in a:
        raise ValueError("two operands")
    return a["input"], a["other"]


def _mul(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val | None:
    """The product of two integer tensors (``mul`` of two inputs), or of one by a python scalar; a product of
    python numbers (sizes) is no tensor: ``None``."""
    if not isinstance(node.meta.get("shape"), tuple):
        return None
    try:
        a, b = _operands(node)
    except ValueError:
        raise ModelError(f"{where(info)}: a product needs two operands") from None
    if set(node.kwargs) - {"input", "other"}:
        raise ModelError(f"{where(info)}: keyword arguments {sorted(node.kwargs)}; only the product of two operands")
    src = f"{info.name} ({info.type})"
    if len(tensor_args(node)) == 1:  # a tensor by a scalar
        x, c = (a, b) if isinstance(a, fx.Node) else (b, a)
        if isinstance(c, bool) or not isinstance(c, int | float) or not np.isfinite(c) or c == 0:
            raise ModelError(f"{where(info)}: a product with {c!r}; the engine supports python scalars other "
                             "than 0 (a tensor constant has no integer grid)")
        return _scaled(ctx, node, info, float(c))
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        raise ModelError(f"{where(info)}: an operand is not an integer tensor (a product with the float network "
                         "input or a tensor constant)")
    va, vb = ctx.int_operands([a, b], info, "a product with the float network input or a tensor constant")
    out = shape_of(node)
    if len(va.shape) != len(out) or len(vb.shape) != len(out) or tuple(np.broadcast_shapes(va.shape, vb.shape)) != out:
        raise ModelError(f"{where(info)}: product {va.shape} * {vb.shape} -> {out}; the engine supports equal "
                         "shapes and size-1 dims broadcast")
    # operands whose product would not fit EXACT_BITS (two tensors still on accumulator grids: a gate computed
    # from the features it scales) are each rounded (half up) to fewer bits first, the wider one first
    ka = kb = 0
    ba, bb = va.bound, vb.bound
    while signed_bits(ba * bb) > EXACT_BITS and max(ba, bb) > 1:
        if ba >= bb:
            ka += 1
        else:
            kb += 1
        ba, bb = (va.bound + (1 << ka >> 1)) >> ka, (vb.bound + (1 << kb >> 1)) >> kb
    bound = ba * bb
    grid = np.asarray(np.ldexp(np.asarray(va.scale, dtype=np.float64), ka)
                      * np.ldexp(np.asarray(vb.scale, dtype=np.float64), kb))
    if grid.ndim and grid.shape != (out[0],) + (1,) * (len(out) - 1):
        grid = grids.compact(grids.full(grid, out))
    attrs: dict[str, Any] = {"const": None, "sign": 1}
    if ka or kb:
        attrs["shifts"] = [ka, kb]
    return ctx.add(IntNode(info.name, "mul", (va.node, vb.node), out, np.array(grid, order="C"), bound, attrs, {},
                           src))


#: the widest product of two tensors, or window sum of a pool, kept exact: the hardware-faithful model computes them in
#: float64 (exact below 2**53), and a requantizer's multiplier on them stays within int64
EXACT_BITS = 48


def _scaled(ctx: Ctx, node: fx.Node, info: OpInfo, c: float) -> Val:
    """A tensor times the python number ``c``: the codes (times its sign) on the grid ``|c|`` times theirs."""
    v = ctx.int_arg(node, info)
    return ctx.add(IntNode(info.name, "mul", (v.node,), v.shape, v.scale * abs(c), v.bound,
                           {"const": c, "sign": 1 if c > 0 else -1}, {}, f"{info.name} ({info.type})"))


def _div(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val | None:
    """A division by a python number (``x / 6``, ``x.div(255)``): the product by its inverse; of sizes: ``None``."""
    if not isinstance(node.meta.get("shape"), tuple):
        return None
    a = fn_args(node, ("input", "other"), {"rounding_mode": None})
    d = a.get("other")
    if isinstance(a.get("input"), fx.Node) is False or a["rounding_mode"] is not None or isinstance(d, bool) or \
            not isinstance(d, int | float) or not np.isfinite(d) or d == 0:
        raise ModelError(f"{where(info)}: a division of {a.get('input')!r} by {d!r}; the engine divides a tensor by "
                         "a python number other than 0 (true division)")
    return _scaled(ctx, node, info, 1.0 / float(d))


# ----------------------------------------------------------------------------- BatchNorm (an affine per channel)


def bn_affine(mod: nn.Module, info: OpInfo) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` (float64, one per channel) of a BatchNorm in eval semantics: ``y = a * x + b`` with
    ``a = gamma / sqrt(var + eps)``, ``b = beta - mean * a``."""
    if not isinstance(mod, _BatchNorm) or type(mod).forward is not _BatchNorm.forward:
        raise ModelError(f"{where(info)}: a BatchNorm subclass with its own forward; not supported by the "
                         "integer engine")
    if mod.running_mean is None or mod.running_var is None:
        raise ModelError(f"{where(info)}: a BatchNorm without running statistics (track_running_stats=False) "
                         "normalises with batch statistics; the integer engine needs fixed ones")
    mean = mod.running_mean.detach().to(torch.float64).numpy()
    var = mod.running_var.detach().to(torch.float64).numpy()
    gamma = mod.weight.detach().to(torch.float64).numpy() if mod.weight is not None else np.ones_like(mean)
    beta = mod.bias.detach().to(torch.float64).numpy() if mod.bias is not None else np.zeros_like(mean)
    a = gamma / np.sqrt(var + float(mod.eps))
    b = beta - mean * a
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ModelError(f"{where(info)}: BatchNorm with non-finite scale or shift")
    return a, b


def _affine(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """A BatchNorm the front end could not fold (after a ReLU, a pool ...): ``affine``, one rounding.

    ``y = round_half_up(q * M_c / 2**n_c) + B_c`` on one output grid ``g`` chosen as a residual add
    chooses it — at least ``add_guard_bits`` finer than the coarsest ``|a_c| * g_in``, never coarser
    than the finest, unless the output would not fit ``sum_bits`` — with ``M_c * 2**-n_c`` (signed,
    ``mult_bits`` bits) the dyadic ``a_c * g_in / g`` and ``B_c = rint(b_c / g)``. Since ``B_c`` is an
    integer this is ``round_half_up(q * M_c / 2**n_c + B_c)``.
    """
    v = ctx.int_arg(node, info)
    assert info.module is not None
    a, b = bn_affine(info.module, info)
    return affine_of(ctx, info, v, a, b, {"float_op": "batch_norm", "eps": float(getattr(info.module, "eps", 0.0))})


def affine_of(ctx: Ctx, info: OpInfo, v: Val, a: np.ndarray, b: np.ndarray, attrs: dict[str, Any]) -> Val:
    """The ``affine`` node of ``y = a_c * x + b_c`` (per channel) on ``v``: an unfolded BatchNorm, or a sum with a
    python number (``a = 1``)."""
    at = where(info)
    if not v.shape:
        raise ModelError(f"{at}: an affine map (BatchNorm, a sum with a number) of a scalar")
    if not grids.is_channel_grid(v.scale):
        raise ModelError(f"{at}: an affine map (BatchNorm, a sum with a number) of a grid that varies in space "
                         "(channels on different grids after a pixel shuffle)")
    c = v.shape[0]
    if a.shape != (c,):
        raise ModelError(f"{at}: {a.shape[0]} BatchNorm features for an input of shape {v.shape}")
    cshape = (c,) + (1,) * (len(v.shape) - 1)
    g_in = grids.channels(v.scale, v.shape).reshape(-1)
    eff = np.abs(a) * g_in
    live = eff[eff > 0]
    def rescaled(grid: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        m_abs, n = dyadic_array(eff / grid, ctx.cfg.mult_bits)
        bias_f = np.rint(b / grid)
        if np.abs(bias_f).max(initial=0) >= INT64_LIMIT:
            raise ModelError(f"{at}: BatchNorm shift too large for its output grid")
        bias = bias_f.astype(np.int64)
        bound = max(((v.bound * int(mc) + (1 << int(nc) >> 1)) >> int(nc)) + abs(int(bc))
                    for mc, nc, bc in zip(m_abs.tolist(), n.tolist(), bias.tolist(), strict=True))
        return m_abs, n, bias, bound

    # every gamma 0: the output is the shift alone, on the input's coarsest grid; coarser by powers of two where
    # the output would not fit sum_bits
    grid = float(min(live.min(), np.ldexp(live.max(), -ctx.cfg.add_guard_bits))) if live.size else float(g_in.max())
    grid = float(capped(np.array(grid), lambda g: rescaled(float(g))[3], ctx.cfg.sum_bits))
    m_abs, n, bias, bound = rescaled(grid)
    m = np.where(a < 0, -m_abs, m_abs).astype(np.int64)
    tops = [v.bound * int(mc) + 2 ** int(nc) for mc, nc in zip(m_abs.tolist(), n.tolist(), strict=True)]
    if max(tops) >= INT64_LIMIT:
        raise ModelError(f"{at}: the rescaled BatchNorm needs more than 62 bits; lower mult_bits")
    if bound >= INT64_LIMIT:
        raise ModelError(f"{at}: the BatchNorm output needs more than 62 bits")
    arrays = {"M": m.reshape(cshape), "n": n.reshape(cshape), "B": bias.reshape(cshape),
              "scale_float": a.astype(np.float32).reshape(cshape), "shift_float": b.astype(np.float32).reshape(cshape)}
    return ctx.add(IntNode(info.name, "affine", (v.node,), v.shape, np.array(grid, dtype=np.float64), int(bound),
                           attrs, arrays, f"{info.name} ({info.type})"))


OP_BUILDERS: dict[str, Callable[[Ctx, fx.Node, OpInfo], Val | None]] = {
    "bn": _affine, "relu": _clamp, "relu6": _clamp, "hardtanh": _clamp, "qlut": _qlut, "lut": _lut,
    "upsample": _upsample, "amax": _amax, "mul": _mul, "div": _div, "clamp": _clamp,
}
