"""Integer dot products of ``conv`` / ``linear`` nodes: multiplies for fixed-point rows,
shifts and adds for SP2, power-of-two, binary and ternary rows.

A row whose format is a sum of signed powers of two computes ``sum_k w_k * x_k`` as the
hardware does: every weight code is decomposed (``fmt.decompose``) into terms
``sign * 2**shift``; the terms are grouped into *planes* by (term index, shift), each
plane a matrix of ``{-1, 0, +1}``; the layer is ``sum_planes (x (*) plane) << shift`` —
the plane products are additions and subtractions only, the shift an exact integer shift.

Each GEMM runs in the cheapest exact dtype (:func:`mixq.engine.arith.exact_dtype`):
its worst-case partial sum ``max|x| * max_row sum|w|`` is known before running, so
float32 (< 2**24) or float64 (< 2**53) BLAS gives the exact integer result; otherwise
an int64 im2col product is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mixq.engine.arith import exact_dtype
from mixq.engine.model import IntNode
from mixq.errors import ModelError
from mixq.formats import FORMATS, format_from_dict

# formats whose rows the engine computes as shift-add planes: each format class says so (``shift_add``)
SHIFT_ADD_KINDS: tuple[str, ...] = tuple(k for k, cls in FORMATS.items() if getattr(cls, "shift_add", False))
PRODUCTS = ("shift_add", "multiply")


def term_planes(codes: np.ndarray, fmt: Any) -> dict[tuple[int, int], np.ndarray]:
    """``{(term, shift): plane}`` with ``codes == sum(plane << shift)`` and planes in {-1, 0, 1}.

    >>> from mixq.formats import SumOfPowers
    >>> p = term_planes(np.array([[5, -8, 0, 2]]), SumOfPowers(4))
    >>> sorted(p), sum(v << s for (_, s), v in p.items()).tolist()
    ([(0, 0), (0, 1), (0, 2), (1, 2)], [[5, -8, 0, 2]])
    """
    levels = np.asarray(fmt.int_levels(), dtype=np.int64)
    idx = np.searchsorted(levels, codes)
    idx = np.clip(idx, 0, len(levels) - 1)
    if not np.array_equal(levels[idx], codes):
        raise ModelError(f"{fmt}: weight codes that are not levels of the format")
    terms = [fmt.decompose(int(q)) for q in levels]
    t_max = max((len(t) for t in terms), default=0)
    sign = np.zeros((len(levels), t_max), dtype=np.int64)
    shift = np.full((len(levels), t_max), -1, dtype=np.int64)
    for i, t in enumerate(terms):
        for j, (sg, sh) in enumerate(t):
            sign[i, j], shift[i, j] = sg, sh
    planes: dict[tuple[int, int], np.ndarray] = {}
    for j in range(t_max):
        sg, sh = sign[idx, j], shift[idx, j]
        for s in np.unique(sh[sh >= 0]).tolist():
            planes[(j, int(s))] = np.where(sh == s, sg, 0)
    return planes


@dataclass
class _Gemm:
    rows: torch.Tensor | None  # output rows it writes (None: all)
    weight: torch.Tensor  # in the exact dtype of the product
    shift: int
    dtype: torch.dtype
    wsum: int  # max over rows of sum |w|: the partial sums are at most max|x| * wsum
    bias: torch.Tensor | None = None  # the bias, added inside the GEMM when that stays exact


def _float32_exact_ok() -> bool:
    return torch.get_float32_matmul_precision() == "highest"


class DotProgram:
    """The prepared integer dot products of one ``conv`` / ``linear`` node."""

    def __init__(self, node: IntNode, x_bound: int, products: str = "shift_add") -> None:
        if products not in PRODUCTS:
            raise ModelError(f"engine products: {products!r} is not one of {', '.join(PRODUCTS)}")
        self.node = node
        a = node.attrs
        self.is_conv = node.op == "conv"
        self.conv_args = ((a["stride"], a["padding"], a["dilation"], a["groups"]) if self.is_conv else None)
        groups = int(a["groups"]) if self.is_conv else 1
        codes = np.asarray(node.arrays["weight"], dtype=np.int64)
        fmts = [format_from_dict(f) for f in a["formats"]]
        row_fmt = np.asarray(node.arrays["row_format"], dtype=np.int64)
        shift_add = [products == "shift_add" and bool(getattr(f, "shift_add", False)) for f in fmts]
        sa_rows = np.array([shift_add[i] for i in row_fmt])
        self.gemms: list[_Gemm] = []
        f32 = _float32_exact_ok()
        subset = groups == 1

        def add(rows: np.ndarray, w: np.ndarray, shift: int) -> None:
            if subset:
                sel = np.flatnonzero(rows)
                if sel.size == 0:
                    return
                w = w[sel]
                idx: torch.Tensor | None = None if sel.size == len(rows) else torch.from_numpy(sel)
            else:
                if not rows.any():
                    return
                w = np.where(rows.reshape((-1,) + (1,) * (w.ndim - 1)), w, 0)
                idx = None
            wsum = int(np.abs(w).reshape(w.shape[0], -1).sum(1).max(initial=0))
            # the dtype of the product itself; the shift happens after, in the accumulator's dtype
            dt = exact_dtype(x_bound * wsum, allow_float32=f32)
            self.gemms.append(_Gemm(idx, torch.from_numpy(np.ascontiguousarray(w)).to(dt), shift, dt, wsum))

        g = int(a.get("acc_frac_bits", 0))  # products enter the accumulator shifted left by g
        add(~sa_rows, codes, g)
        if sa_rows.any():
            planes: dict[tuple[int, int], np.ndarray] = {}
            for i, fmt in enumerate(fmts):
                rows_i = sa_rows & (row_fmt == i)
                if not rows_i.any():
                    continue
                sel = np.flatnonzero(rows_i)
                for key, p in term_planes(codes[sel], fmt).items():
                    full = planes.setdefault(key, np.zeros_like(codes))
                    full[sel] += p
            for (_, shift), p in sorted(planes.items()):
                add(sa_rows, p, shift + g)
        self.bias = torch.from_numpy(np.asarray(node.arrays["bias"], dtype=np.int64))
        bias_max = int(np.abs(node.arrays["bias"]).max(initial=0))
        # every partial sum of the whole layer (all GEMMs, shifts and the bias) is at most this
        total = sum(x_bound * g.wsum << g.shift for g in self.gemms) + bias_max
        self.acc_dtype = exact_dtype(total, allow_float32=f32)
        self.bias_in_gemm = False
        one = self.gemms[0] if len(self.gemms) == 1 and self.gemms[0].rows is None else None
        if one is not None and self.acc_dtype != torch.int64 and (one.shift == 0 or one.dtype == self.acc_dtype):
            # one exact GEMM does products, shift (a power-of-two factor on the weights) and bias
            one.weight = one.weight.to(self.acc_dtype) * float(2**one.shift)
            one.dtype, one.bias, one.shift = self.acc_dtype, self.bias.to(self.acc_dtype), 0
            self.bias_in_gemm = True
        self.rows = codes.shape[0]
        budget = int(a["acc_budget"])
        self.sat = (-(2 ** (budget - 1)), 2 ** (budget - 1) - 1) if a["saturate"] else None

    def _product(self, x: torch.Tensor, g: _Gemm, cache: dict[torch.dtype, torch.Tensor]) -> torch.Tensor:
        if g.dtype not in cache:
            cache[g.dtype] = x.to(g.dtype)
        xd = cache[g.dtype]
        if self.is_conv:
            assert self.conv_args is not None
            stride, padding, dilation, groups = self.conv_args
            if g.dtype == torch.int64:
                y = conv2d_int64(xd, g.weight, stride, padding, dilation, groups)
            elif g.dtype == torch.float64 and groups > 1:  # torch's float64 grouped conv is very slow
                y = grouped_conv2d(xd, g.weight, g.bias, stride, padding, dilation, groups)
            else:
                y = F.conv2d(xd, g.weight, g.bias, stride, padding, dilation, groups)
        else:
            y = xd @ g.weight.t() if g.dtype == torch.int64 else F.linear(xd, g.weight, g.bias)
        y = y.to(self.acc_dtype)
        if g.shift:  # an exact shift: integer shift, or a power-of-two multiply of an exact float
            y = y << g.shift if self.acc_dtype == torch.int64 else y * float(2**g.shift)
        return y

    def __call__(self, xs: list[torch.Tensor], stats: dict[str, int]) -> torch.Tensor:
        """The accumulators ``sum w*x + B`` (integer-valued, in the exact dtype ``acc_dtype``)."""
        x = xs[0]
        cache: dict[torch.dtype, torch.Tensor] = {}
        acc: torch.Tensor | None = None
        for g in self.gemms:
            y = self._product(x, g, cache)
            if g.rows is None:
                acc = y if acc is None else acc.add_(y)
            else:
                if acc is None:
                    acc = torch.zeros((y.shape[0], self.rows) + tuple(y.shape[2:]), dtype=self.acc_dtype)
                acc.index_add_(1, g.rows, y)
        if acc is None:  # all-zero layer
            acc = torch.zeros((x.shape[0], self.rows) + tuple(self.node.shape[1:]), dtype=self.acc_dtype)
        if not self.bias_in_gemm:
            acc = acc + self.bias.to(self.acc_dtype).reshape((1, -1) + (1,) * (acc.dim() - 2))
        if self.sat is not None:
            lo, hi = self.sat
            stats[self.node.name] = stats.get(self.node.name, 0) + int(((acc < lo) | (acc > hi)).sum())
            acc = acc.clamp(lo, hi)
        return acc


def grouped_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: Any, padding: Any,
                   dilation: Any, groups: int) -> torch.Tensor:
    """A grouped convolution by im2col and a batched product (exact like any sum of products)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, C*kh*kw, L)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = cols.reshape(n, groups, cg * kh * kw, ho * wo)
    wg = w.reshape(groups, o // groups, cg * kh * kw)
    if o == groups:  # depthwise: one row per group, an element-wise product and a sum
        y = (cols * wg.reshape(1, groups, cg * kh * kw, 1)).sum(2)
    else:
        y = torch.einsum("ngkl,gok->ngol", cols, wg).reshape(n, o, ho * wo)
    y = y.reshape(n, o, ho, wo)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def conv2d_int64(x: torch.Tensor, w: torch.Tensor, stride: list[int], padding: list[int],
                 dilation: list[int], groups: int) -> torch.Tensor:
    """Exact int64 convolution by im2col (for layers whose sums exceed float64's 2**53)."""
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    ph, pw = padding
    xp = F.pad(x, (pw, pw, ph, ph))
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    patches = xp.unfold(2, eh, stride[0]).unfold(3, ew, stride[1])[..., :: dilation[0], :: dilation[1]]
    ho, wo = patches.shape[2], patches.shape[3]
    patches = patches.reshape(n, groups, cg, ho, wo, kh, kw)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    out = torch.einsum("ngchwij,gocij->ngohw", patches, wg)
    return out.reshape(n, o, ho, wo)
