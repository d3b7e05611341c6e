"""Run an :class:`~mixq.engine.model.IntModel` with integer arithmetic.

``IntEngine(model)`` prepares every node once (weights in their exact GEMM dtype,
multipliers as tensors); ``engine(x)`` runs a float input batch and returns an
:class:`IntResult`: the output integers, their grid, and (``keep``) chosen nodes'
integers. Only the network input is a float; it is quantized exactly as the
fake-quant input quantizer does. Everything after holds integers: a node's tensor
is integer-valued float32 / float64 while its proven bound allows (below 2**24 /
2**53), int64 beyond; products in exact BLAS or int64, requantization, residual adds
and BatchNorm affines by the round-half-up rule of :mod:`mixq.engine.arith`, pooling and channel reductions by
max and sum, products of two tensors exactly in a dtype that holds their bound; data
movement, interpolation and lookup tables in :mod:`mixq.engine.kernels_move`.
Runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mixq.engine.arith import FLOAT64_EXACT, exact_dtype, requantize, requantize_sum
from mixq.engine.convert_fbs import fbs_kernel
from mixq.engine.kernels import DotProgram
from mixq.engine.kernels_move import MOVE_KERNELS
from mixq.engine.model import IntModel, IntNode
from mixq.formats import format_from_dict

Kernel = Callable[[list[torch.Tensor], dict[str, int]], torch.Tensor]


@dataclass
class IntResult:
    """Output of one engine run: integers ``codes`` on the grid ``scale`` (real value = codes * scale)."""

    codes: torch.Tensor
    scale: np.ndarray
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    saturated: dict[str, int] = field(default_factory=dict)

    def real(self) -> torch.Tensor:
        """The output in real units (float64): ``codes * scale``."""
        return dequantize(self.codes, self.scale)


def dequantize(codes: torch.Tensor, scale: np.ndarray) -> torch.Tensor:
    """``codes * scale`` in float64 (``scale`` broadcast over the batch dimension)."""
    return codes.to(torch.float64) * torch.from_numpy(np.asarray(scale, dtype=np.float64))


def _t(a: np.ndarray) -> torch.Tensor:
    """A per-sample array as a tensor broadcastable over the batch dimension."""
    return torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0)


def store(x: torch.Tensor, bound: int) -> torch.Tensor:
    """``x`` (integer-valued) in the cheapest dtype holding ``|x| <= bound`` exactly."""
    return x.to(exact_dtype(bound))


def _quantize(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    fmt = format_from_dict(node.attrs["fmt"])
    s = torch.tensor(node.attrs["act_scale"], dtype=torch.float32)
    shape = tuple(node.shape)
    # the float input reshaped as shape-only ops (unsqueeze / squeeze) before the quantizer left it
    return lambda xs, _st: store(fmt.quantize(xs[0].reshape(-1, *shape), s), node.bound)


def _requant(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    m_np, n_np = node.arrays["M"], node.arrays["n"]
    lo, hi = int(node.attrs["qmin"]), int(node.attrs["qmax"])
    x_bound = bounds[node.inputs[0]]
    if x_bound * int(m_np.max()) + 2 ** int(n_np.max()) < FLOAT64_EXACT:
        # x * M + 2**(n-1) < 2**53: floor(x * (M * 2**-n) + 1/2) is exact in float64
        r = _t(np.ldexp(m_np.astype(np.float64), -n_np))
        out = exact_dtype(node.bound)

        def run64(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
            y = xs[0].to(torch.float64) * r
            y += 0.5
            return y.floor_().clamp_(lo, hi).to(out)

        return run64
    m, n = _t(m_np), _t(n_np)
    return lambda xs, _st: requantize(xs[0].to(torch.int64), m, n).clamp_(lo, hi)


def _dot(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    return DotProgram(node, bounds[node.inputs[0]], products)


def _clamp(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    lo = node.arrays.get("lo")
    hi = node.arrays.get("hi")
    if hi is None and lo is not None and int(lo.min()) == int(lo.max()):  # ReLU: a scalar limit
        v = int(lo.min())
        return lambda xs, _st: xs[0].clamp(min=v)
    lo_t = _t(lo) if lo is not None else None
    hi_t = _t(hi) if hi is not None else None
    return lambda xs, _st: torch.clamp(xs[0], None if lo_t is None else lo_t.to(xs[0].dtype),
                                       None if hi_t is None else hi_t.to(xs[0].dtype))


def _maxpool(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    a = node.attrs
    return lambda xs, _st: F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"],
                                        ceil_mode=a["ceil_mode"])


def _sumpool(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    a = node.attrs
    k, stride, pad = a["kernel"], a["stride"], a["padding"]
    dt = exact_dtype(node.bound)
    shift, ceil = torch.tensor(int(a.get("shift", 0))), bool(a.get("ceil_mode", False))
    one = torch.tensor(1)

    def run(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
        x = (requantize(xs[0].to(torch.int64), one, shift) if int(shift) else xs[0]).to(dt)
        if list(x.shape[2:]) == list(k) and not any(pad):
            y = x.sum(dim=(2, 3), keepdim=True)
        elif dt != torch.int64:
            y = F.avg_pool2d(x, k, stride, pad, ceil_mode=ceil, divisor_override=1)
        else:  # the windows a ceil mode adds reach past the padded map: zeros there
            oh, ow = node.shape[-2:] if len(node.shape) == 3 else (1, 1)
            extra = [max(0, (o - 1) * st + kk - (n + 2 * p)) for o, st, kk, n, p in
                     zip((oh, ow), stride, k, x.shape[2:], pad, strict=True)]
            xp = F.pad(x, (pad[1], pad[1] + extra[1], pad[0], pad[0] + extra[0]))
            y = xp.unfold(2, k[0], stride[0]).unfold(3, k[1], stride[1]).sum(dim=(-1, -2))
        return y if a["keepdim"] else y.flatten(1)

    return run


def _add(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    m_np, n_np = node.arrays["M"], node.arrays["n"]
    top = sum(bounds[i] * int(m_np[k].max()) for k, i in enumerate(node.inputs)) + 2 ** int(n_np.max())
    if top < FLOAT64_EXACT:
        # sum_i x_i * M_i + 2**(n-1) < 2**53: the rescaled sum and its rounding are exact in float64
        rs = [_t(np.ldexp(m_np[k].astype(np.float64), -n_np)) for k in range(m_np.shape[0])]
        out = exact_dtype(node.bound)

        def run64(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
            y = xs[0].to(torch.float64) * rs[0]
            for x, r in zip(xs[1:], rs[1:], strict=True):
                y += x.to(torch.float64) * r
            y += 0.5
            return y.floor_().to(out)

        return run64
    ms = [_t(m_np[k]) for k in range(m_np.shape[0])]
    n = _t(n_np)
    return lambda xs, _st: requantize_sum([x.to(torch.int64) for x in xs], ms, n)


def _reduce(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    """Max or sum over the channels of ``x_c * M_c``, one rounding (``>> n``, half up) after."""
    m_np = np.asarray(node.arrays["M"], dtype=np.int64)
    n = int(node.arrays["n"])
    keep, is_sum = bool(node.attrs["keepdim"]), node.attrs["fn"] == "sum"
    top = bounds[node.inputs[0]] * int(m_np.max()) * (m_np.shape[0] if is_sum else 1) + 2**n
    out = exact_dtype(node.bound)

    def red(y: torch.Tensor) -> torch.Tensor:
        return y.sum(1, keepdim=keep) if is_sum else y.amax(1, keepdim=keep)

    if n == 0 and int(m_np.min()) == int(m_np.max()) == 1:  # one grid: the codes as they are
        dt = exact_dtype(top)
        return lambda xs, _st: red(xs[0].to(dt)).to(out)
    if top < FLOAT64_EXACT // 2:
        # |R(x * M)| + 2**(n-1) < 2**52: the products, the sum and floor(y * 2**-n + 1/2) are exact in float64
        m64, scale = _t(m_np.astype(np.float64)), 2.0**-n

        def run64(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
            y = red(xs[0].to(torch.float64) * m64)
            return y.mul_(scale).add_(0.5).floor_().to(out)

        return run64
    m, nt = _t(m_np), torch.tensor(n)
    return lambda xs, _st: requantize(red(xs[0].to(torch.int64) * m), torch.tensor(1), nt)


def _mul(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    """The exact product of the codes (in a dtype that holds ``bound``), or the codes times the scalar's sign."""
    if node.attrs.get("const") is not None:
        sign = int(node.attrs["sign"])
        return (lambda xs, _st: xs[0]) if sign == 1 else (lambda xs, _st: -xs[0])
    dt = exact_dtype(node.bound)
    ka, kb = (int(k) for k in node.attrs.get("shifts", (0, 0)))
    if ka or kb:  # each operand rounded (half up) to fewer bits first: ((x + 2**(k-1)) >> k)
        one, sa, sb = torch.tensor(1), torch.tensor(ka), torch.tensor(kb)

        def run(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
            a, b = (x.to(torch.int64) for x in xs)
            return requantize(a, one, sa).to(dt) * requantize(b, one, sb).to(dt)
        return run
    return lambda xs, _st: xs[0].to(dt) * xs[1].to(dt)


def _affine(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    """A BatchNorm per channel: ``((x * M_c + 2**(n_c-1)) >> n_c) + B_c`` (round half up, signed ``M_c``)."""
    m_np, n_np, b_np = (np.asarray(node.arrays[k], dtype=np.int64) for k in ("M", "n", "B"))
    out = exact_dtype(node.bound)
    top = bounds[node.inputs[0]] * int(np.abs(m_np).max()) + 2 ** int(n_np.max())
    if top < FLOAT64_EXACT and node.bound < FLOAT64_EXACT:
        # |x * M| + 2**(n-1) < 2**53: floor(x * (M * 2**-n) + 1/2) is exact in float64, + B too (|y| <= bound)
        r, b64 = _t(np.ldexp(m_np.astype(np.float64), -n_np)), _t(b_np.astype(np.float64))

        def run64(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
            y = xs[0].to(torch.float64) * r
            y += 0.5
            return y.floor_().add_(b64).to(out)

        return run64
    m, n, b = _t(m_np), _t(n_np), _t(b_np)
    return lambda xs, _st: requantize(xs[0].to(torch.int64), m, n) + b


def _flatten(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    return lambda xs, _st: torch.flatten(xs[0], 1)


def _cat(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    dt = exact_dtype(node.bound)
    return lambda xs, _st: torch.cat([x.to(dt) for x in xs], dim=1)


KERNELS: dict[str, Callable[[IntNode, dict[str, int], str], Kernel]] = {
    "quantize": _quantize, "requant": _requant, "conv": _dot, "linear": _dot, "clamp": _clamp,
    "maxpool": _maxpool, "sumpool": _sumpool, "add": _add, "reduce": _reduce, "mul": _mul, "affine": _affine,
    "flatten": _flatten,
    "cat": _cat,
    **MOVE_KERNELS, "fbs": fbs_kernel,
}


class IntEngine:
    """A prepared integer model; call it on a float input batch.

    ``products="shift_add"`` (default) computes SP2 / power-of-two / binary / ternary
    rows with shifts and additions; ``"multiply"`` multiplies every code (the same
    integers, one GEMM per layer).
    """

    def __init__(self, model: IntModel, products: str = "shift_add") -> None:
        self.model = model
        bounds = {n.name: int(n.bound) for n in model.nodes}
        self.kernels = [(n, KERNELS[n.op](n, bounds, products)) for n in model.nodes]
        last: dict[str, int] = {}
        for i, n in enumerate(model.nodes):
            for inp in n.inputs:
                last[inp] = i
        self._last_use = last

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, keep: bool | set[str] = False) -> IntResult:
        """Run a float input batch; ``keep`` (True, or a set of node names) returns those nodes' integers."""
        env: dict[str, torch.Tensor] = {"input": x.detach().cpu()}
        stats: dict[str, int] = {}
        out = self.model.output
        wanted = set(env) | {n.name for n in self.model.nodes} if keep is True else set(keep or ())
        kept: dict[str, torch.Tensor] = {}
        for i, (node, kernel) in enumerate(self.kernels):
            env[node.name] = kernel([env[k] for k in node.inputs], stats)
            if node.name in wanted:
                kept[node.name] = env[node.name].to(torch.int64)
            for k in dict.fromkeys(node.inputs):  # once each: x * x reads one node twice
                if self._last_use.get(k) == i and k != out:
                    del env[k]
        return IntResult(env[out].to(torch.int64), self.model.node(out).scale, kept, stats)


def run(model: IntModel, x: torch.Tensor, keep: bool = False, products: str = "shift_add") -> IntResult:
    """Prepare ``model`` and run it on ``x`` (see :class:`IntEngine`)."""
    return IntEngine(model, products)(x, keep=keep)
