"""Builders of element-wise ops and of interpolation: clamps (ReLU / ReLU6 / Hardtanh and
``Hardtanh`` subclasses with per-channel bounds such as CLE's clipped ReLU6), lookup-table
activations (``QLutAct``), and upsampling (nearest: data movement, :mod:`mixq.engine.convert_shape`;
bilinear: an exact linear op on a finer grid).

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from mixq.engine import grids
from mixq.engine.arith import INT64_LIMIT, round_half_up
from mixq.engine.context import Ctx, Val, quant_input
from mixq.engine.convert_shape import image, nearest, scale_factors, upsample_args
from mixq.engine.model import IntNode
from mixq.engine.trace import OpInfo, fn_args, shape_of
from mixq.errors import ModelError
from mixq.nn import QLutAct

MAX_INTERP_DENOM = 2**12


def _where(info: OpInfo) -> str:
    return f"layer {info.name!r} ({info.type})"


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
    if mod is None:
        a = fn_args(node, ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0})
        return np.asarray(float(a["min_val"])), np.asarray(float(a["max_val"]))
    lower, upper = getattr(mod, "lower", mod.min_val), getattr(mod, "upper", mod.max_val)
    try:
        lo, hi = _channel_limit(lower, shape), _channel_limit(upper, shape)
    except ValueError as e:
        raise ModelError(f"{_where(info)}: per-channel bounds do not fit its input {shape}: {e}") from None
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
        raise ModelError(f"{_where(info)}: its forward fails on a probe input ({e})") from None
    if not torch.equal(y, ref):
        raise ModelError(f"{_where(info)}: a Hardtanh subclass whose forward is not clamp(x, lower, upper); "
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
        raise ModelError(f"{_where(info)}: bilinear interpolation of a grid that varies in space "
                         "(channels on different grids after a pixel shuffle)")
    out = shape_of(node)
    (_, h, w), (_, oh, ow) = v.shape, out
    ac = bool(a["align_corners"])
    fh, fw = scale_factors(a)
    wh, dh = linear_weights(h, oh, ac, fh)
    ww, dw = linear_weights(w, ow, ac, fw)
    if dh * dw > MAX_INTERP_DENOM:
        raise ModelError(f"{_where(info)}: bilinear {h}x{w} -> {oh}x{ow} (scale {a['scale_factor']}, align_corners "
                         f"{ac}) has weights on a grid of 1/{dh * dw}; the engine supports integer scale factors "
                         f"and sizes whose weights are multiples of 1/{MAX_INTERP_DENOM} at most")
    bound = v.bound * dh * dw
    if bound >= INT64_LIMIT:
        raise ModelError(f"{_where(info)}: interpolated values need more than 62 bits")
    attrs = {"mode": "bilinear", "align_corners": ac, "denom": [dh, dw], "size": [oh, ow],
             "scale_factor": None if fh is None or fw is None else [fh, fw]}
    return ctx.add(IntNode(info.name, "interp", (v.node,), out, v.scale / (dh * dw), bound, attrs,
                           {"wh": wh, "ww": ww}, f"{info.name} ({info.type})"))


def _upsample(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.int_arg(node, info)
    image(v, info)
    a = upsample_args(node, info)
    if a["antialias"]:
        raise ModelError(f"{_where(info)}: antialiased interpolation is not supported by the integer engine")
    if a["mode"] == "bilinear":
        return _interp(ctx, node, info, v, a)
    if a["mode"] in ("nearest", "nearest-exact"):
        return nearest(ctx, node, info, v, a)
    raise ModelError(f"{_where(info)}: interpolation mode {a['mode']!r}; the engine supports nearest "
                     "(integer factors) and bilinear")


OP_BUILDERS: dict[str, Callable[[Ctx, fx.Node, OpInfo], Val | None]] = {
    "relu": _clamp, "relu6": _clamp, "hardtanh": _clamp, "qlut": _qlut, "lut": _lut, "upsample": _upsample,
}
