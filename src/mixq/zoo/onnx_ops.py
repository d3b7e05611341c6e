"""The op handlers of the ONNX import (:mod:`mixq.zoo.onnx_import`): the table ``OPS``.

Each handler reads one ONNX node through the build context (:class:`mixq.zoo.onnx_import.Ctx`) and emits the FX
nodes that compute it: a standard ``torch.nn`` module for every op that has one (``Conv`` ->
``nn.Conv2d``, ``Gemm`` -> ``nn.Linear``, ``Resize`` -> ``nn.Upsample``...), ``operator`` /
``torch`` functions for arithmetic and ``reshape`` / ``permute`` methods for layout. Every
attribute combination is either mapped exactly or refused with :meth:`Ctx.unsupported`.

Tensors computed from the model input keep the batch at axis 0; a handler that would move,
merge or reduce the batch axis refuses the node, so the imported module takes any batch size.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import skip_init

if TYPE_CHECKING:
    from mixq.zoo.onnx_import import Ctx

Handler = Callable[["Ctx", Any], None]


# ---------------------------------------------------------------------------------------------- helpers


def _copy(param: object, value: np.ndarray) -> None:
    """An exact float32 copy of ``value`` into a module's parameter or buffer."""
    assert isinstance(param, torch.Tensor)
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(param.shape))


def _spatial_pads(ctx: Ctx, node: Any, a: dict[str, Any], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begins, ends) of the spatial padding: ``pads`` or resolved from ``auto_pad`` and the inferred shape."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = [int(p) for p in a.get("pads", [0] * 2 * n)]
        return pads[:n], pads[n:]
    if auto == "VALID":
        return [0] * n, [0] * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.unsupported(node, f"auto_pad={auto}")
    sizes = ctx.static_shape(node, node.input[0])[2:]
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins, ends


def _torch_pad(begins: Sequence[int], ends: Sequence[int]) -> tuple[int, ...]:
    """ONNX spatial (begins, ends) -> torch's (last_begin, last_end, previous_begin, ...)."""
    return tuple(v for b, e in zip(reversed(begins), reversed(ends), strict=True) for v in (b, e))


_PAD_MODULES: dict[tuple[str, int], Callable[[Any, float], nn.Module]] = {
    ("zero", 1): lambda p, v: nn.ZeroPad1d(p),
    ("zero", 2): lambda p, v: nn.ZeroPad2d(p),
    ("constant", 1): lambda p, v: nn.ConstantPad1d(p, v),
    ("constant", 2): lambda p, v: nn.ConstantPad2d(p, v),
    ("reflect", 1): lambda p, v: nn.ReflectionPad1d(p),
    ("reflect", 2): lambda p, v: nn.ReflectionPad2d(p),
    ("edge", 1): lambda p, v: nn.ReplicationPad1d(p),
    ("edge", 2): lambda p, v: nn.ReplicationPad2d(p),
    ("wrap", 1): lambda p, v: nn.CircularPad1d(p),
    ("wrap", 2): lambda p, v: nn.CircularPad2d(p),
}


def _pad_kind(mode: str, value: float) -> str:
    return "zero" if mode == "constant" and value == 0.0 else mode


def _pad_module(begins: Sequence[int], ends: Sequence[int], value: float = 0.0, mode: str = "constant") -> nn.Module:
    return _PAD_MODULES[(_pad_kind(mode, value), len(begins))](_torch_pad(begins, ends), value)


def _geometry(a: dict[str, Any], n: int) -> tuple[list[int], list[int]]:
    return [int(s) for s in a.get("strides", [1] * n)], [int(d) for d in a.get("dilations", [1] * n)]


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return sorted(int(a) + rank if a < 0 else int(a) for a in axes)


# ---------------------------------------------------------------------------------------------- convolution, linear


_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d}
_CONV_T: dict[int, type[nn.Module]] = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}


def _conv_weights(ctx: Ctx, node: Any) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], int]:
    w, b, a = ctx.weight(node, 1), ctx.const(node, 2), ctx.attrs(node)
    n = w.ndim - 2
    if n not in _CONV:
        raise ctx.unsupported(node, f"{n}-D convolution; 1-D and 2-D are")
    if "kernel_shape" in a and list(a["kernel_shape"]) != list(w.shape[2:]):
        raise ctx.unsupported(node, f"kernel_shape {a['kernel_shape']} differs from the weight's {w.shape[2:]}")
    return w, None if b is None else b.astype(np.float32), a, n


def conv(ctx: Ctx, node: Any) -> None:
    w, b, a, n = _conv_weights(ctx, node)
    strides, dilations = _geometry(a, n)
    groups = int(a.get("group", 1))
    begins, ends = _spatial_pads(ctx, node, a, w.shape[2:], strides, dilations)
    x = ctx.value(node, 0)
    if begins != ends:
        x = ctx.module(node, _pad_module(begins, ends), [x], "_pad")
        begins = [0] * n
    mod = skip_init(_CONV[n], w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(strides),
                    padding=tuple(begins), dilation=tuple(dilations), groups=groups, bias=b is not None)
    _copy(mod.weight, w)
    if b is not None:
        _copy(mod.bias, b)
    ctx.put(node, ctx.module(node, mod, [x]))


def conv_transpose(ctx: Ctx, node: Any) -> None:
    w, b, a, n = _conv_weights(ctx, node)
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if "output_shape" in a:
        raise ctx.unsupported(node, "the output_shape attribute; give pads and output_padding")
    if auto not in ("NOTSET", "VALID"):
        raise ctx.unsupported(node, f"auto_pad={auto}")
    strides, dilations = _geometry(a, n)
    groups = int(a.get("group", 1))
    pads = [0] * 2 * n if auto == "VALID" else [int(p) for p in a.get("pads", [0] * 2 * n)]
    if pads[:n] != pads[n:]:
        raise ctx.unsupported(node, f"asymmetric pads {pads}")
    out_pad = [int(p) for p in a.get("output_padding", [0] * n)]
    if any(p >= max(s, d) for p, s, d in zip(out_pad, strides, dilations, strict=True)):
        raise ctx.unsupported(node, f"output_padding {out_pad} not smaller than the stride or dilation")
    mod = skip_init(_CONV_T[n], w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride=tuple(strides),
                    padding=tuple(pads[:n]), output_padding=tuple(out_pad), groups=groups, bias=b is not None,
                    dilation=tuple(dilations))
    _copy(mod.weight, w)
    if b is not None:
        _copy(mod.bias, b)
    ctx.put(node, ctx.module(node, mod, [ctx.value(node, 0)]))


def _linear(ctx: Ctx, node: Any, w: np.ndarray, bias: np.ndarray | None, name_from: Any = None) -> fx.Node:
    """``nn.Linear`` with weight ``w`` (out, in)."""
    mod = skip_init(nn.Linear, w.shape[1], w.shape[0], bias=bias is not None)
    _copy(mod.weight, w)
    if bias is not None:
        _copy(mod.bias, bias)
    return ctx.module(node, mod, [ctx.value(node, 0)], name_from=name_from)


def _per_output(c: np.ndarray, n: int) -> np.ndarray | None:
    """A bias broadcast along the last axis: ``c`` of ``n`` values (or one) with only leading unit axes."""
    if c.size == n and (c.ndim == 0 or c.shape[-1] == n):
        return c.reshape(n).astype(np.float32)
    if c.size == 1:
        return np.full(n, float(c.reshape(-1)[0]), dtype=np.float32)
    return None


def gemm(ctx: Ctx, node: Any) -> None:
    a = ctx.attrs(node)
    if a.get("transA", 0):
        raise ctx.unsupported(node, "transA=1")
    w = ctx.weight(node, 1)
    if w.ndim != 2:
        raise ctx.unsupported(node, f"a weight of rank {w.ndim}")
    w = (w if a.get("transB", 0) else w.T) * np.float32(a.get("alpha", 1.0))
    c = ctx.const(node, 2)
    bias = None
    if c is not None:
        bias = _per_output(c.astype(np.float32) * np.float32(a.get("beta", 1.0)), w.shape[0])
        if bias is None:
            raise ctx.unsupported(node, f"C of shape {c.shape} is not a bias per output")
    ctx.put(node, _linear(ctx, node, w, bias))


def matmul(ctx: Ctx, node: Any) -> None:
    if node.input[0] in ctx.env and ctx.is_const(node.input[1]) and ctx.consts[node.input[1]].ndim == 2:
        w = ctx.weight(node, 1).T
        hit = ctx.sole_consumer(node.output[0])
        if hit is not None and hit[1].op_type == "Add":
            add = hit[1]
            other = [n for n in add.input if n != node.output[0]]
            rank = len(ctx.shapes.get(node.input[0], (0,)))
            c = ctx.consts.get(other[0]) if len(other) == 1 and other[0] not in ctx.masks else None
            if c is not None and c.dtype.kind == "f" and c.ndim <= max(rank, 1) and c.size == w.shape[0]:
                ctx.fuse(hit[0], add, _linear(ctx, node, w, _per_output(c, w.shape[0])))
                return
        ctx.put(node, _linear(ctx, node, w, None))
        return
    ctx.put(node, ctx.function(node, torch.matmul, [ctx.value(node, 0), ctx.value(node, 1)]))


def batch_norm(ctx: Ctx, node: Any) -> None:
    a = ctx.attrs(node)
    if a.get("training_mode", 0) or a.get("spatial", 1) != 1:
        raise ctx.unsupported(node, "training mode or spatial=0")
    if any(ctx.used(o) for o in node.output[1:]):
        raise ctx.unsupported(node, "the running-statistics outputs")
    rank = ctx.rank(node, node.input[0])
    cls: type[nn.Module] | None = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(rank)
    if cls is None:
        raise ctx.unsupported(node, f"an input of rank {rank}")
    scale, bias, mean, var = (ctx.weight(node, i) for i in range(1, 5))
    mod = cls(scale.size, eps=float(a.get("epsilon", 1e-5)))
    for tensor, value in ((mod.weight, scale), (mod.bias, bias), (mod.running_mean, mean), (mod.running_var, var)):
        _copy(tensor, value)
    mod.eval()
    ctx.put(node, ctx.module(node, mod, [ctx.value(node, 0)]))


# ---------------------------------------------------------------------------------------------- activations


def _unary(factory: Callable[[dict[str, Any]], nn.Module]) -> Handler:
    def handler(ctx: Ctx, node: Any) -> None:
        ctx.put(node, ctx.module(node, factory(ctx.attrs(node)), [ctx.value(node, 0)]))

    return handler


def _gate(plain: Callable[[], nn.Module], fused: Callable[[], nn.Module]) -> Handler:
    """``g(x)`` -> ``plain()``; ``Mul(x, g(x))`` -> ``fused()`` on x (SiLU, Hardswish)."""

    def handler(ctx: Ctx, node: Any) -> None:
        x, y = node.input[0], node.output[0]
        hit = ctx.sole_consumer(y)
        if hit is not None and hit[1].op_type == "Mul" and sorted(hit[1].input) == sorted([x, y]) and x != y:
            ctx.fuse(hit[0], hit[1], ctx.module(node, fused(), [ctx.value(node, 0)], name_from=hit[1]))
            return
        ctx.put(node, ctx.module(node, plain(), [ctx.value(node, 0)]))

    return handler


def hard_sigmoid(ctx: Ctx, node: Any) -> None:
    a = ctx.attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if abs(alpha - 1 / 6) > 1e-6 or beta != 0.5:
        raise ctx.unsupported(node, f"alpha={alpha:g}, beta={beta:g}; only alpha=1/6, beta=0.5 is nn.Hardsigmoid")
    _gate(nn.Hardsigmoid, nn.Hardswish)(ctx, node)


def _clip_bounds(ctx: Ctx, node: Any) -> tuple[float | None, float | None]:
    a = ctx.attrs(node)
    if "min" in a or "max" in a or ctx.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo, hi = ((None if v is None else float(v.reshape(-1)[0])) for v in (ctx.const(node, 1), ctx.const(node, 2)))
    big = float(np.finfo(np.float32).max)
    return (None if lo is None or lo <= -big else float(lo)), (None if hi is None or hi >= big else float(hi))


def clip(ctx: Ctx, node: Any) -> None:
    lo, hi = _clip_bounds(ctx, node)
    x = ctx.value(node, 0)
    if lo is None and hi is None:
        ctx.alias(node, x)
        return
    if lo is not None and hi is not None and lo >= hi:
        raise ctx.unsupported(node, f"min {lo:g} not below max {hi:g}")
    mod: nn.Module
    if lo == 0.0 and hi == 6.0:
        mod = nn.ReLU6()
    elif lo == 0.0 and hi is None:
        mod = nn.ReLU()
    else:
        mod = nn.Hardtanh(-math.inf if lo is None else lo, math.inf if hi is None else hi)
    ctx.put(node, ctx.module(node, mod, [x]))


# ---------------------------------------------------------------------------------------------- pooling


_MAX_POOL: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_AVG_POOL: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d}


def _pool_setup(ctx: Ctx, node: Any) -> tuple[dict[str, Any], list[int], list[int], list[int], list[int], list[int]]:
    a = ctx.attrs(node)
    if any(ctx.used(o) for o in node.output[1:]):
        raise ctx.unsupported(node, "the Indices output")
    kernel = [int(k) for k in a["kernel_shape"]]
    if len(kernel) not in _MAX_POOL:
        raise ctx.unsupported(node, f"{len(kernel)}-D pooling; 1-D and 2-D are")
    strides, dilations = _geometry(a, len(kernel))
    begins, ends = _spatial_pads(ctx, node, a, kernel, strides, dilations)
    return a, kernel, strides, dilations, begins, ends


def _fits(begins: list[int], ends: list[int], kernel: list[int], dilations: list[int]) -> bool:
    """torch pools take symmetric padding of at most half the effective kernel."""
    return begins == ends and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in zip(begins, kernel, dilations,
                                                                               strict=True))


def max_pool(ctx: Ctx, node: Any) -> None:
    a, kernel, strides, dilations, begins, ends = _pool_setup(ctx, node)
    x = ctx.value(node, 0)
    if not _fits(begins, ends, kernel, dilations):
        x = ctx.module(node, _pad_module(begins, ends, -math.inf), [x], "_pad")
        begins = [0] * len(kernel)
    mod = _MAX_POOL[len(kernel)](tuple(kernel), tuple(strides), tuple(begins), tuple(dilations),
                                 ceil_mode=bool(a.get("ceil_mode", 0)))
    ctx.put(node, ctx.module(node, mod, [x]))


def avg_pool(ctx: Ctx, node: Any) -> None:
    a, kernel, strides, dilations, begins, ends = _pool_setup(ctx, node)
    if any(d != 1 for d in dilations):
        raise ctx.unsupported(node, f"dilations {dilations}")
    include = bool(a.get("count_include_pad", 0))
    x = ctx.value(node, 0)
    if not _fits(begins, ends, kernel, dilations):
        if not include:
            raise ctx.unsupported(node, f"pads {begins + ends} with count_include_pad=0")
        x = ctx.module(node, _pad_module(begins, ends), [x], "_pad")
        begins = [0] * len(kernel)
    mod = _AVG_POOL[len(kernel)](tuple(kernel), tuple(strides), tuple(begins), ceil_mode=bool(a.get("ceil_mode", 0)),
                                 count_include_pad=include)
    ctx.put(node, ctx.module(node, mod, [x]))


_GLOBAL: dict[tuple[str, int], Callable[[], nn.Module]] = {
    ("avg", 3): lambda: nn.AdaptiveAvgPool1d(1),
    ("avg", 4): lambda: nn.AdaptiveAvgPool2d(1),
    ("max", 3): lambda: nn.AdaptiveMaxPool1d(1),
    ("max", 4): lambda: nn.AdaptiveMaxPool2d(1),
}


def _global(kind: str) -> Handler:
    def handler(ctx: Ctx, node: Any) -> None:
        rank = ctx.rank(node, node.input[0])
        if (kind, rank) not in _GLOBAL:
            raise ctx.unsupported(node, f"an input of rank {rank}")
        ctx.put(node, ctx.module(node, _GLOBAL[(kind, rank)](), [ctx.value(node, 0)]))

    return handler


# ONNX reduction -> (torch function taking dim and keepdim, the global pool of the same reduction over every
# spatial axis, if any)
_REDUCE: dict[str, tuple[Callable[..., torch.Tensor], str | None]] = {
    "ReduceMean": (torch.mean, "avg"),
    "ReduceMax": (torch.amax, "max"),
    "ReduceMin": (torch.amin, None),
}


def reduce(ctx: Ctx, node: Any) -> None:
    """ReduceMean / ReduceMax / ReduceMin over any axes but the batch: a global pool over every spatial axis,
    else ``torch.mean`` / ``amax`` / ``amin`` with ``dim`` and ``keepdim``."""
    fn, kind = _REDUCE[node.op_type]
    a = ctx.attrs(node)
    keep = bool(a.get("keepdims", 1))
    rank = ctx.rank(node, node.input[0])
    axes = ctx.ints(node, 1, "axes")
    x = ctx.value(node, 0)
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            ctx.alias(node, x)
            return
        raise ctx.unsupported(node, "a reduction over every axis, the batch too")
    axes = _norm_axes(axes, rank)
    if 0 in axes:
        raise ctx.unsupported(node, "a reduction over the batch axis")
    if kind is not None and axes == list(range(2, rank)) and (kind, rank) in _GLOBAL:
        out = ctx.module(node, _GLOBAL[(kind, rank)](), [x])
        if not keep:
            out = ctx.module(node, nn.Flatten(1), [out], "_flatten")
        ctx.put(node, out)
        return
    ctx.put(node, ctx.function(node, fn, [x], {"dim": tuple(axes), "keepdim": keep}))


# ---------------------------------------------------------------------------------------------- arithmetic, layout


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv,
}


def _binary(fn: Callable[[Any, Any], Any]) -> Handler:
    def handler(ctx: Ctx, node: Any) -> None:
        ctx.put(node, ctx.function(node, fn, [ctx.value(node, 0), ctx.value(node, 1)]))

    return handler


def concat(ctx: Ctx, node: Any) -> None:
    names = [n for n in node.input if n]
    if any(ctx.is_const(n) for n in names):
        raise ctx.unsupported(node, "concatenating a constant with computed tensors")
    rank = ctx.rank(node, names[0])
    axis = _norm_axes([int(ctx.attrs(node)["axis"])], rank)[0]
    values = [ctx.value(node, i) for i, n in enumerate(node.input) if n]
    ctx.put(node, ctx.function(node, torch.cat, [values], {"dim": axis}))


def flatten(ctx: Ctx, node: Any) -> None:
    rank = ctx.rank(node, node.input[0])
    axis = _norm_axes([int(ctx.attrs(node).get("axis", 1))], rank)[0]
    if axis != 1:
        raise ctx.unsupported(node, f"axis={axis} merges the batch axis with others")
    ctx.put(node, ctx.module(node, nn.Flatten(1), [ctx.value(node, 0)]))


def _reshape_rest(ctx: Ctx, node: Any, in_shape: tuple[int, ...], target: list[int], mask: np.ndarray | None,
                  allowzero: bool) -> list[int]:
    """The per-sample target shape (without the batch) of a Reshape that keeps the batch at axis 0."""
    if allowzero and 0 in target:
        raise ctx.unsupported(node, "allowzero=1 with a zero in the target shape")
    t = [in_shape[i] if v == 0 and not allowzero and i < len(in_shape) else v for i, v in enumerate(target)]
    rest, per_sample = t[1:], math.prod(in_shape[1:])
    if rest.count(-1) > 1 or not t:
        raise ctx.unsupported(node, f"target shape {target}")
    if -1 in rest:
        known = math.prod(v for v in rest if v != -1)
        if known == 0 or per_sample % known:
            raise ctx.unsupported(node, f"target shape {target} for an input {in_shape}")
        rest[rest.index(-1)] = per_sample // known
    batch_kept = (mask is not None and bool(mask[0])) or t[0] in (-1, ctx.batch)
    if not batch_kept or math.prod(rest) != per_sample:
        raise ctx.unsupported(node, f"target shape {target} moves data across the batch axis of {in_shape}")
    return rest


def _batch_flatten(ctx: Ctx, node: Any, target: list[int], mask: np.ndarray | None, allowzero: bool) -> bool:
    """Whether ``target`` is (batch, -1) for an input of known rank >= 2: ``torch.flatten(x, 1)`` whatever the
    input's other dims (the target's first entry the batch: from the input's Shape, -1, 0 or the batch)."""
    shape = ctx.shapes.get(node.input[0])
    if shape is None or len(shape) < 2 or len(target) != 2 or target[1] != -1:
        return False
    return (mask is not None and bool(mask[0])) or target[0] == ctx.batch or (target[0] == 0 and not allowzero)


def reshape(ctx: Ctx, node: Any) -> None:
    given = ctx.const(node, 1, batch_ok=True)
    if given is None:
        raise ctx.unsupported(node, "no target shape")
    target, mask = [int(v) for v in given.reshape(-1)], ctx.masks.get(node.input[1])
    allowzero = bool(ctx.attrs(node).get("allowzero", 0))
    x = ctx.value(node, 0)
    if None in (ctx.shapes.get(node.input[0]) or (None,)) and _batch_flatten(ctx, node, target, mask, allowzero):
        ctx.put(node, ctx.function(node, torch.flatten, [x, 1]))
        return
    in_shape = ctx.static_shape(node, node.input[0])
    rest = _reshape_rest(ctx, node, in_shape, target, mask, allowzero)
    if rest == list(in_shape[1:]):
        ctx.alias(node, x)
    elif len(rest) == 1:
        ctx.put(node, ctx.function(node, torch.flatten, [x, 1]))
    else:
        ctx.put(node, ctx.method(node, "reshape", [x, -1, *rest]))


def squeeze(ctx: Ctx, node: Any) -> None:
    shape = ctx.static_shape(node, node.input[0])
    axes = ctx.ints(node, 1, "axes")
    dims = _norm_axes(axes, len(shape)) if axes else [i for i, d in enumerate(shape) if d == 1 and i > 0]
    if 0 in dims or any(shape[d] != 1 for d in dims):
        raise ctx.unsupported(node, f"squeezing axes {dims} of {shape} (the batch axis or a non-unit axis)")
    ctx.put(node, ctx.method(node, "squeeze", [ctx.value(node, 0), tuple(dims)]))


def unsqueeze(ctx: Ctx, node: Any) -> None:
    axes = ctx.ints(node, 1, "axes")
    if not axes:
        raise ctx.unsupported(node, "no axes")
    dims = _norm_axes(axes, ctx.rank(node, node.input[0]) + len(axes))
    if 0 in dims:
        raise ctx.unsupported(node, "a new axis before the batch axis")
    out = ctx.value(node, 0)
    for d in dims:
        out = ctx.method(node, "unsqueeze", [out, d])
    ctx.put(node, out)


def transpose(ctx: Ctx, node: Any) -> None:
    rank = ctx.rank(node, node.input[0])
    perm = [int(p) for p in ctx.attrs(node).get("perm", range(rank - 1, -1, -1))]
    if perm[0] != 0:
        raise ctx.unsupported(node, f"perm {perm} moves the batch axis")
    ctx.put(node, ctx.method(node, "permute", [ctx.value(node, 0), *perm]))


def slice_(ctx: Ctx, node: Any) -> None:
    """A computed tensor's ``Slice`` with constant starts / ends / axes and step 1: one ``narrow`` per axis (never
    the batch axis; bounds clipped as ONNX clips them)."""
    shape = ctx.static_shape(node, node.input[0])
    starts, ends = ctx.ints(node, 1, "starts"), ctx.ints(node, 2, "ends")
    if starts is None or ends is None:
        raise ctx.unsupported(node, "starts / ends that are not constant")
    axes = ctx.ints(node, 3, "axes") if len(node.input) > 3 and node.input[3] else None
    steps = ctx.ints(node, 4, "steps") if len(node.input) > 4 and node.input[4] else None
    axes = _norm_axes(axes if axes is not None else list(range(len(starts))), len(shape))
    if steps is not None and any(st != 1 for st in steps):
        raise ctx.unsupported(node, f"steps {steps} (only 1)")
    y = ctx.value(node, 0)
    for ax, b, e in zip(axes, starts, ends, strict=True):
        n = shape[ax]
        b, e = (min(max(v + n if v < 0 else v, 0), n) for v in (b, e))
        if (b, e) == (0, n):
            continue
        if ax == 0:
            raise ctx.unsupported(node, "slicing the batch axis")
        y = ctx.function(node, torch.narrow, [y, ax, b, max(e - b, 0)])
    if y is ctx.value(node, 0):
        ctx.alias(node, y)
    else:
        ctx.put(node, y)


def split(ctx: Ctx, node: Any) -> None:
    """``Split`` of a computed tensor along a non-batch axis into its outputs: one ``narrow`` each (sizes from the
    ``split`` input / attribute, or equal parts: ``num_outputs`` or the number of outputs)."""
    shape = ctx.static_shape(node, node.input[0])
    a = ctx.attrs(node)
    ax = _norm_axes([int(a.get("axis", 0))], len(shape))[0]
    if ax == 0:
        raise ctx.unsupported(node, "splitting the batch axis")
    sizes = ctx.ints(node, 1, "split") if len(node.input) > 1 and node.input[1] or "split" in a else None
    n_out = len(node.output)
    if sizes is None:
        part = -(-shape[ax] // int(a.get("num_outputs", n_out)))
        sizes = [min(part, shape[ax] - i * part) for i in range(n_out)]
    if len(sizes) != n_out or sum(sizes) != shape[ax]:
        raise ctx.unsupported(node, f"split sizes {sizes} of an axis of {shape[ax]}")
    x, start = ctx.value(node, 0), 0
    for i, size in enumerate(sizes):
        ctx.put(node, ctx.function(node, torch.narrow, [x, ax, start, size]), i)
        start += size


def passthrough(ctx: Ctx, node: Any) -> None:
    """Identity, and Dropout in inference."""
    if any(ctx.used(o) for o in node.output[1:]):
        raise ctx.unsupported(node, "the mask output")
    training = ctx.const(node, 2) if node.op_type == "Dropout" else None
    if training is not None and bool(training.reshape(-1)[0]):
        raise ctx.unsupported(node, "training_mode=true")
    ctx.alias(node, ctx.value(node, 0))


def depth_to_space(ctx: Ctx, node: Any) -> None:
    a = ctx.attrs(node)
    b, mode = int(a["blocksize"]), a.get("mode", "DCR")
    x = ctx.value(node, 0)
    if mode == "CRD":
        ctx.put(node, ctx.module(node, nn.PixelShuffle(b), [x]))
        return
    if mode != "DCR":
        raise ctx.unsupported(node, f"mode={mode}")
    shape = ctx.static_shape(node, node.input[0])
    if len(shape) != 4:
        raise ctx.unsupported(node, f"an input of rank {len(shape)}")
    _, c, h, w = shape
    y = ctx.method(node, "reshape", [x, -1, b, b, c // (b * b), h, w])
    y = ctx.method(node, "permute", [y, 0, 3, 4, 1, 5, 2])
    ctx.put(node, ctx.method(node, "reshape", [y, -1, c // (b * b), h * b, w * b]))


def pad(ctx: Ctx, node: Any) -> None:
    a = ctx.attrs(node)
    mode = a.get("mode", "constant")
    rank = ctx.rank(node, node.input[0])
    if "pads" in a:
        pads, value = [int(p) for p in a["pads"]], float(a.get("value", 0.0))
    else:
        given, cval = ctx.const(node, 1), ctx.const(node, 2)
        pads = [] if given is None else [int(p) for p in given.reshape(-1)]
        value = 0.0 if cval is None or cval.size == 0 else float(cval.reshape(-1)[0])
        given_axes = ctx.const(node, 3)
        if given_axes is not None:
            axes = [int(x) + rank if x < 0 else int(x) for x in given_axes.reshape(-1)]
            full = [0] * 2 * rank
            for k, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
            pads = full
    if len(pads) != 2 * rank:
        raise ctx.unsupported(node, f"pads {pads} for an input of rank {rank}")
    begins, ends = pads[:rank], pads[rank:]
    if any(begins[:2]) or any(ends[:2]) or min(pads) < 0:
        raise ctx.unsupported(node, f"pads {pads} (on the batch or channel axis, or negative)")
    if (_pad_kind(mode, value), rank - 2) not in _PAD_MODULES:
        raise ctx.unsupported(node, f"mode={mode} on an input of rank {rank}")
    ctx.put(node, ctx.module(node, _pad_module(begins[2:], ends[2:], value, mode), [ctx.value(node, 0)]))


# ---------------------------------------------------------------------------------------------- resize


# nearest-neighbour (coordinate mode, rounding) pairs equal to torch's floor(dst / s) for integer scales s
_NEAREST_EXACT = {
    ("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor"),
    ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
    ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil"),
}
_LINEAR_ALIGN = {"half_pixel": False, "pytorch_half_pixel": False, "align_corners": True}
_LINEAR_MODE = {3: "linear", 4: "bilinear"}


def _resize_params(ctx: Ctx, node: Any, a: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None, str, str]:
    """(scales, sizes, coordinate mode, nearest mode) of a Resize or Upsample node."""
    if node.op_type == "Upsample" or ctx.opset < 11:
        scales = np.array(a["scales"], dtype=np.float32) if "scales" in a else ctx.const(node, 1)
        return scales, None, "asymmetric", "floor"
    for key, ok in (("antialias", 0), ("exclude_outside", 0), ("keep_aspect_ratio_policy", "stretch")):
        if a.get(key, ok) != ok:
            raise ctx.unsupported(node, f"{key}={a[key]}")
    if "axes" in a:
        raise ctx.unsupported(node, "the axes attribute")
    scales, sizes = ctx.const(node, 2), ctx.const(node, 3, batch_ok=True)
    return (None if scales is None or scales.size == 0 else scales), sizes, \
        a.get("coordinate_transformation_mode", "half_pixel"), a.get("nearest_mode", "round_prefer_floor")


def resize(ctx: Ctx, node: Any) -> None:
    a = ctx.attrs(node)
    shape = ctx.static_shape(node, node.input[0])
    scales, sizes, coord, nearest = _resize_params(ctx, node, a)
    mode = a.get("mode", "nearest")
    if len(shape) not in _LINEAR_MODE:
        raise ctx.unsupported(node, f"an input of rank {len(shape)}")
    if scales is not None:
        if [float(s) for s in scales[:2]] != [1.0, 1.0]:
            raise ctx.unsupported(node, f"scales {scales.tolist()} resize the batch or channel axis")
        factors = [float(s) for s in scales[2:]]
        out = [math.floor(n * f) for n, f in zip(shape[2:], factors, strict=True)]
    elif sizes is not None:
        out = [int(s) for s in sizes[2:]]
        if int(sizes[1]) != shape[1]:
            raise ctx.unsupported(node, f"sizes {sizes.tolist()} resize the channel axis")
        factors = [o / n for o, n in zip(out, shape[2:], strict=True)]
    else:
        raise ctx.unsupported(node, "neither scales nor sizes")
    # ONNX maps output to input coordinates with the given scale (or out/in for sizes), torch with 1/scale
    integer = min(out) > 0 and all(f == int(f) and o == n * int(f) for f, o, n in zip(factors, out, shape[2:],
                                                                                   strict=True))
    if mode == "nearest":
        if not integer or (coord, nearest) not in _NEAREST_EXACT:
            raise ctx.unsupported(node, f"nearest with coordinate_transformation_mode={coord}, "
                                        f"nearest_mode={nearest}, scales {factors}; integer upscales with "
                                        "asymmetric+floor or half_pixel+round_prefer_* are")
        mod = nn.Upsample(scale_factor=tuple(float(f) for f in factors), mode="nearest")
    elif mode == "linear":
        if coord not in _LINEAR_ALIGN or (coord == "pytorch_half_pixel" and min(out) == 1):
            raise ctx.unsupported(node, f"linear with coordinate_transformation_mode={coord} to sizes {out}")
        geometry: dict[str, Any] = {"scale_factor": tuple(factors)} if scales is not None else {"size": tuple(out)}
        mod = nn.Upsample(**geometry, mode=_LINEAR_MODE[len(shape)], align_corners=_LINEAR_ALIGN[coord])
    else:
        raise ctx.unsupported(node, f"mode={mode}")
    ctx.put(node, ctx.module(node, mod, [ctx.value(node, 0)]))


# ---------------------------------------------------------------------------------------------- the table


OPS: dict[str, Handler] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_norm,
    "Relu": _unary(lambda a: nn.ReLU()),
    "Tanh": _unary(lambda a: nn.Tanh()),
    "HardSwish": _unary(lambda a: nn.Hardswish()),
    "LeakyRelu": _unary(lambda a: nn.LeakyReLU(float(a.get("alpha", 0.01)))),
    "Sigmoid": _gate(nn.Sigmoid, nn.SiLU),
    "HardSigmoid": hard_sigmoid,
    "Clip": clip,
    "MaxPool": max_pool,
    "AveragePool": avg_pool,
    "GlobalAveragePool": _global("avg"),
    "GlobalMaxPool": _global("max"),
    **{op: reduce for op in _REDUCE},
    **{op: _binary(fn) for op, fn in _BINARY.items()},
    "Concat": concat,
    "Flatten": flatten,
    "Reshape": reshape,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Transpose": transpose,
    "Slice": slice_,
    "Split": split,
    "Identity": passthrough,
    "Dropout": passthrough,
    "DepthToSpace": depth_to_space,
    "Resize": resize,
    "Upsample": resize,
    "Pad": pad,
}
