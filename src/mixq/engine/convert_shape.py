"""Builders of data-movement ops: flatten, reshapes, axis permutations, slices (chunk / split parts),
concatenation, zero padding, zero insertion, pixel shuffle and nearest upsampling (its builder, shared with
bilinear, is in :mod:`mixq.engine.convert_ops`).

None of them computes: every output element is an input element or a zero, and zero is on every
grid, so the integer codes move unchanged and the grid moves with them (:mod:`mixq.engine.grids`).
Shape-only ops (``unsqueeze`` / ``squeeze`` / a reshape that inserts or removes unit dims) are
also allowed on the float network input: they change the shape its first quantizer sees.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from mixq.engine import grids
from mixq.engine.context import Ctx, Val, where
from mixq.engine.model import IntNode
from mixq.engine.trace import OpInfo, fn_args, shape_of, tensor_args
from mixq.errors import ModelError
from mixq.graph.spec import reorders
from mixq.graph.trace import constant_value, permutation, sample_axes, slice_ranges


def _node(ctx: Ctx, info: OpInfo, op: str, v: Val, shape: tuple[int, ...], grid: np.ndarray,
          attrs: dict[str, Any]) -> Val:
    node = IntNode(info.name, op, (v.node,), shape, grid, v.bound, attrs, {}, f"{info.name} ({info.type})")
    return ctx.defer(v, node) if v.is_float else ctx.add(node)


def image(v: Val, info: OpInfo) -> None:
    if len(v.shape) != 3:
        raise ModelError(f"{where(info)}: needs (C, H, W) inputs, got {v.shape}")


# ----------------------------------------------------------------------------- flatten / reshape / cat


def flatten_val(ctx: Ctx, node: fx.Node, info: OpInfo, v: Val) -> Val:
    if v.is_float:
        raise ModelError(f"{where(info)}: flatten of the float network input")
    if len(v.shape) <= 1:
        return v
    grid = v.scale if v.scale.ndim == 0 else grids.full(v.scale, v.shape).reshape(-1)
    return _node(ctx, info, "flatten", v, shape_of(node), grid, {"start_dim": 1})


def _flatten(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.arg(node, info)
    if info.module is not None:
        mod: Any = info.module
        start, end = mod.start_dim, mod.end_dim
    else:
        a = fn_args(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
        start, end = a["start_dim"], a["end_dim"]
    if start != 1 or end != -1:
        raise ModelError(f"{where(info)}: flatten({start}, {end}); only flatten(x, 1)")
    return flatten_val(ctx, node, info, v)


def _dims_ok(node: fx.Node, info: OpInfo, v: Val) -> None:
    """``squeeze`` / ``unsqueeze`` need an explicit dim that is not the batch dim."""
    if info.kind not in ("squeeze", "unsqueeze"):
        return
    a = fn_args(node, ("input", "dim"), {"dim": None})
    dims = a["dim"] if isinstance(a["dim"], list | tuple) else [a["dim"]]
    if any(d is None for d in dims):
        raise ModelError(f"{where(info)}: {info.kind} without a dim would touch the batch dim; give the dim")
    rank = len(v.shape) + 1 + (1 if info.kind == "unsqueeze" else 0)  # the dims a dim index counts
    if any(int(d) % rank == 0 for d in dims):
        raise ModelError(f"{where(info)}: {info.kind} of dim 0 (the batch dim)")


def _reshape(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """``view`` / ``reshape`` / ``unsqueeze`` / ``squeeze`` / ``x[:, None]``: flattening, or inserting / removing
    unit dims."""
    v = ctx.arg(node, info)
    _dims_ok(node, info, v)
    out = shape_of(node)
    if out == v.shape:
        return v
    if v.is_float:
        if grids.reshape(v.scale, v.shape, out) is None:
            raise ModelError(f"{where(info)}: reshape {v.shape} -> {out} of the float network input; "
                             "only unit dims may be inserted or removed before the first quantizer")
        if v.moves:  # after data movement: replayed in order on the codes
            return _node(ctx, info, "reshape", v, out, v.scale, {"shape": list(out)})
        return Val(v.node, True, v.scale, v.bound, out)
    grid = grids.reshape(v.scale, v.shape, out)
    if grid is not None:
        return _node(ctx, info, "reshape", v, out, grid, {"shape": list(out)})
    if len(out) == 1 and out[0] == int(np.prod(v.shape)):
        return flatten_val(ctx, node, info, v)
    # any other reshape (a channel shuffle's (C, H, W) -> (g, C / g, H, W) and back): the codes keep their order,
    # each element's grid goes with it
    grid = grids.move(v.scale, v.shape, lambda g: g.reshape(1, *out), spatial_only=False)
    return _node(ctx, info, "reshape", v, out, grid, {"shape": list(out)})


def _permute(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """``permute`` / ``transpose`` of the per-sample axes (the batch axis stays first): the codes and
    the grid move together."""
    v = ctx.arg(node, info)  # on the float input: deferred to its quantizer (Ctx.defer)
    axes = sample_axes(node, len(v.shape) + 1)
    if axes is None:
        raise ModelError(f"{where(info)}: {info.type} moves the batch axis "
                         f"(dims {list(permutation(node, len(v.shape) + 1))})")
    if not reorders(axes, v.shape):  # only unit dims move: a reshape
        return _reshape(ctx, node, info)
    grid = grids.move(v.scale, v.shape, lambda g: g.permute(0, *(a + 1 for a in axes)), spatial_only=False)
    return _node(ctx, info, "transpose", v, shape_of(node), grid, {"perm": axes})


def _split(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """``chunk`` / ``split``: its parts (``slice`` nodes) read the input; nothing of its own."""
    return ctx.arg(node, info)


def _slice(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """A contiguous range of one per-sample dim (a part of a ``chunk`` / ``split``, ``x[:, a:b]``, ``narrow``):
    the codes and their grid cut alike."""
    v = ctx.arg(node, info)
    cuts = [(dim - 1, start, stop) for dim, start, stop in slice_ranges(node) if (start, stop) != (0, v.shape[dim - 1])]
    if any(d < 0 for d, _, _ in cuts):
        raise ModelError(f"{where(info)}: a slice of the batch dim")
    for k, (d, start, stop) in enumerate(cuts):  # one slice node per dim cut (the last one named as the layer)
        shape = tuple(stop - start if i == d else n for i, n in enumerate(v.shape))
        grid = grids.move(v.scale, v.shape, functools.partial(_narrow, dim=d + 1, start=start, stop=stop),
                          spatial_only=False)
        step = info if k == len(cuts) - 1 else replace(info, name=f"{info.name}.dim{d + 1}")
        v = _node(ctx, step, "slice", v, shape, grid, {"dim": d, "start": start, "stop": stop})
    return v


def _narrow(g: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    return g.narrow(dim, start, stop - start)


def _zeros(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """``torch.zeros_like(x)`` (an option-A shortcut's zero channels, a recurrent cell's first state): zero codes on
    ``x``'s grid."""
    v = ctx.arg(node, info)
    if set(node.kwargs) - {"memory_format"} or len(node.args) != 1:
        raise ModelError(f"{where(info)}: zeros_like with arguments {sorted(node.kwargs)}; only zeros_like(x)")
    return _node(ctx, info, "zeros", v, shape_of(node), v.scale, {})


def _gather(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """``torch.index_select(x, dim, index)`` with a constant ``index`` (CondenseNet's channel selection): the codes
    and their grid picked alike."""
    v = ctx.arg(node, info)
    a = fn_args(node, ("input", "dim", "index"), {})
    idx_node = a.get("index")
    if not (isinstance(idx_node, fx.Node) and idx_node.op == "get_attr"):
        raise ModelError(f"{where(info)}: index_select by {idx_node!r}; the engine takes a constant index tensor")
    index = constant_value(idx_node).reshape(-1).to(torch.long)
    d = int(a["dim"]) % (len(v.shape) + 1) - 1
    if d < 0:
        raise ModelError(f"{where(info)}: index_select of the batch dim")
    grid = grids.move(v.scale, v.shape, lambda g: g.index_select(d + 1, index), spatial_only=False)
    return _node(ctx, info, "gather", v, shape_of(node), grid, {"dim": d, "index": index.tolist()})


def _repeat(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val | None:
    """``x.repeat(1, r, 1, 1)`` (VNet's input copied to 16 channels): the copies of one non-batch dim, the gather
    of ``arange(n).repeat(r)`` on it."""
    v = ctx.arg(node, info)
    args = node.args[1:]
    reps: tuple[Any, ...] = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    if not all(isinstance(r, int) for r in reps) or len(reps) != len(v.shape) + 1 or reps[0] != 1:
        raise ModelError(f"{where(info)}: repeat {reps}; the engine repeats the non-batch dims of a "
                         f"{len(v.shape) + 1}-dim tensor by constant counts")
    dims = [d for d, r in enumerate(reps[1:]) if r != 1]
    if not dims:
        return v
    if len(dims) > 1:
        raise ModelError(f"{where(info)}: repeat {reps} copies {len(dims)} dims; the engine repeats one")
    d = dims[0]
    index = torch.arange(v.shape[d]).repeat(int(reps[d + 1]))
    grid = grids.move(v.scale, v.shape, lambda g: g.index_select(d + 1, index), spatial_only=False)
    return _node(ctx, info, "gather", v, shape_of(node), grid, {"dim": d, "index": index.tolist()})


def _cat(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    ins = tensor_args(node)
    a = fn_args(node, ("tensors", "dim"), {"dim": 0})
    vals = [ctx.env.get(i) for i in ins]
    if any(v is None or v.is_float for v in vals):
        raise ModelError(f"{where(info)}: concatenates a tensor that is not integer")
    ok = [v for v in vals if v is not None]
    if int(a["dim"]) % (len(ok[0].shape) + 1) != 1:
        raise ModelError(f"{where(info)}: concatenation along dim {a['dim']}; only channels")
    parts = [grids.channels(v.scale, v.shape) for v in ok]
    if not all(grids.is_channel_grid(p) for p in parts):
        parts = [grids.full(p, v.shape) for p, v in zip(parts, ok, strict=True)]
    grid = grids.compact(np.concatenate(parts, axis=0))
    return ctx.add(IntNode(info.name, "cat", tuple(v.node for v in ok), shape_of(node), grid,
                           max(v.bound for v in ok), {"dim": 1}, {}, f"{info.name} ({info.type})"))


def _identity(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val | None:
    ins = tensor_args(node)
    return ctx.env.get(ins[0]) if ins else None


def _size(ctx: Ctx, node: fx.Node, info: OpInfo) -> None:
    return None


# ----------------------------------------------------------------------------- padding and upsampling


def pad_amounts(node: fx.Node, info: OpInfo) -> tuple[list[int], list[int]]:
    """``([left, right, top, bottom], [front, back])``: the zero padding of W and H, and of the channels (a
    PyramidNet / option-A shortcut's ``F.pad(x, (0, 0, 0, 0, 0, c))``), of ``ZeroPad2d`` / ``ConstantPad2d(0)`` /
    ``F.pad``; an unpadded batch dimension and a pad of nothing in another mode (MONAI's ``UpCat``: a "replicate"
    pad whose amounts are zero where the sizes match) are accepted."""
    if info.module is not None:
        mod: Any = info.module
        pads, mode, value = list(mod.padding), "constant", float(getattr(mod, "value", 0.0))
    else:
        a = fn_args(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
        pads, mode, value = list(a["pad"]), a["mode"], float(a["value"] or 0.0)
    if len(pads) == 8 and not any(int(p) for p in pads[6:]):  # the batch dimension, unpadded (MONAI's HighResNet)
        pads = pads[:6]
    if (mode != "constant" or value != 0.0) and any(int(p) for p in pads):  # a pad of nothing is one in any mode
        raise ModelError(f"{where(info)}: padding mode {mode!r} with value {value}; only zero padding")
    if len(pads) not in (2, 4, 6) or any(int(p) < 0 for p in pads):
        raise ModelError(f"{where(info)}: padding {pads}; only non-negative padding of W, H and the channels")
    pads = [int(p) for p in pads] + [0] * (6 - len(pads))
    return pads[:4], pads[4:]


def _pad(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.arg(node, info)  # on the float input: deferred to its quantizer (Ctx.defer)
    image(v, info)
    pads, cpads = pad_amounts(node, info)
    attrs: dict[str, Any] = {"pads": pads}
    if any(cpads):  # new channels: zeros, on the grid of the nearest channel
        attrs["channel_pads"] = cpads
        grid = grids.move(v.scale, v.shape, lambda g: F.pad(g[None], pads + cpads, mode="replicate")[0],
                          spatial_only=False)
    else:
        grid = grids.move(v.scale, v.shape, lambda g: F.pad(g, pads, mode="replicate"), spatial_only=True)
    return _node(ctx, info, "pad", v, shape_of(node), grid, attrs)


def _zero_insert(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    v = ctx.arg(node, info)  # on the float input: deferred to its quantizer (Ctx.defer)
    image(v, info)
    mod: Any = info.module
    (sh, sw), (eh, ew) = mod.stride, mod.extra
    _, h, w = v.shape

    def spread(g: torch.Tensor) -> torch.Tensor:
        g = g.repeat_interleave(sh, 2).repeat_interleave(sw, 3)[:, :, :(h - 1) * sh + 1, :(w - 1) * sw + 1]
        return F.pad(g, (0, ew, 0, eh), mode="replicate")

    grid = grids.move(v.scale, v.shape, spread, spatial_only=True)
    return _node(ctx, info, "zero_insert", v, shape_of(node), grid, {"stride": [sh, sw], "extra": [eh, ew]})


def _pixel_shuffle(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
    """Channel ``c * r * r + i * r + j`` goes to pixel ``(i, j)`` of output channel ``c``: the grid moves with
    it (per output channel when the ``r * r`` source channels share a grid, per position otherwise)."""
    v = ctx.arg(node, info)  # on the float input: deferred to its quantizer (Ctx.defer)
    image(v, info)
    mod: Any = info.module
    r = int(mod.upscale_factor) if mod is not None else int(fn_args(node, ("input", "upscale_factor"), {})
                                                            ["upscale_factor"])
    grid = grids.move(v.scale, v.shape, lambda g: F.pixel_shuffle(g, r), spatial_only=False)
    return _node(ctx, info, "pixel_shuffle", v, shape_of(node), grid, {"factor": r})


def upsample_args(node: fx.Node, info: OpInfo) -> dict[str, Any]:
    """``size``, ``scale_factor``, ``mode``, ``align_corners``, ``recompute_scale_factor``, ``antialias``."""
    if info.module is not None:
        mod: Any = info.module
        return {"size": mod.size, "scale_factor": mod.scale_factor, "mode": mod.mode,
                "align_corners": mod.align_corners, "recompute_scale_factor": mod.recompute_scale_factor,
                "antialias": False}
    return fn_args(node, ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                          "antialias"),
                   {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
                    "recompute_scale_factor": None, "antialias": False})


def scale_factors(a: dict[str, Any]) -> tuple[float | None, float | None]:
    """The per-axis scale factors torch uses for the source index (``None``: it uses in/out)."""
    sf = a["scale_factor"]
    if sf is None or a["recompute_scale_factor"]:
        return None, None
    hs, ws = (sf, sf) if isinstance(sf, int | float) else tuple(sf)
    return float(hs), float(ws)


def nearest(ctx: Ctx, node: fx.Node, info: OpInfo, v: Val, a: dict[str, Any]) -> Val:
    """Nearest upsampling by integer factors: output pixel ``(i, j)`` is input pixel ``(i // kh, j // kw)``."""
    out = shape_of(node)
    (_, h, w), (_, oh, ow) = v.shape, out
    factors = scale_factors(a)
    if oh % h or ow % w or any(f is not None and f != k for f, k in zip(factors, (oh // h, ow // w), strict=True)):
        raise ModelError(f"{where(info)}: nearest upsampling {h}x{w} -> {oh}x{ow} (scale {a['scale_factor']}); "
                         "only integer factors")
    kh, kw = oh // h, ow // w
    grid = grids.move(v.scale, v.shape, lambda g: g.repeat_interleave(kh, 2).repeat_interleave(kw, 3),
                      spatial_only=True)
    return _node(ctx, info, "upsample", v, out, grid, {"scale": [kh, kw], "mode": "nearest"})


SHAPE_BUILDERS: dict[str, Callable[[Ctx, fx.Node, OpInfo], Val | None]] = {
    "flatten": _flatten, "reshape": _reshape, "unsqueeze": _reshape, "squeeze": _reshape, "index": _reshape,
    "cat": _cat,
    "identity": _identity, "size": _size, "pad": _pad, "zero_insert": _zero_insert,
    "pixel_shuffle": _pixel_shuffle, "permute": _permute, "split": _split, "slice": _slice, "zeros": _zeros,
    "gather": _gather, "index_constant": _size, "repeat": _repeat,
}
