"""Kernels of data movement (reshape, axis permutation, slice, zero padding, zero insertion, pixel shuffle,
nearest upsampling), bilinear interpolation (exact integer weights) and lookup tables.

Data movement copies integers (and zeros) whatever their dtype. Interpolation multiplies by the
integer weight matrices in float64 while its proven bound stays below 2**53 (every partial sum of
non-negative weights times integers is then exact), in int64 beyond. A lookup table indexes its
integer entries with the input codes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mixq.engine.arith import exact_dtype
from mixq.engine.model import IntNode

Kernel = Callable[[list[torch.Tensor], dict[str, int]], torch.Tensor]


def _reshape(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    shape = tuple(int(d) for d in node.attrs["shape"])
    return lambda xs, _st: xs[0].reshape(-1, *shape)


def _transpose(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    dims = (0, *(int(p) + 1 for p in node.attrs["perm"]))
    return lambda xs, _st: xs[0].permute(dims).contiguous()


def _slice(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    d, start, stop = (int(node.attrs[k]) for k in ("dim", "start", "stop"))
    return lambda xs, _st: xs[0].narrow(d + 1, start, stop - start)


def _gather(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    d, index = int(node.attrs["dim"]), torch.tensor(node.attrs["index"], dtype=torch.long)
    return lambda xs, _st: xs[0].index_select(d + 1, index)


def _zeros(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    return lambda xs, _st: torch.zeros_like(xs[0])


def _pad(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    pads = [int(p) for p in node.attrs["pads"]] + [int(p) for p in node.attrs.get("channel_pads", ())]
    return lambda xs, _st: F.pad(xs[0], pads)


def _zero_insert(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    (sh, sw), (eh, ew) = node.attrs["stride"], node.attrs["extra"]

    def run(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
        x = xs[0]
        n, c, h, w = x.shape
        out = x.new_zeros(n, c, (h - 1) * sh + 1 + eh, (w - 1) * sw + 1 + ew)
        out[:, :, : (h - 1) * sh + 1 : sh, : (w - 1) * sw + 1 : sw] = x
        return out

    return run


def _pixel_shuffle(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    r = int(node.attrs["factor"])

    def run(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
        x = xs[0]
        n, c, h, w = x.shape
        y = x.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (r * r), h * r, w * r)

    return run


def _upsample(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    kh, kw = (int(k) for k in node.attrs["scale"])
    return lambda xs, _st: xs[0].repeat_interleave(kh, dim=2).repeat_interleave(kw, dim=3)


def _interp(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    dt = exact_dtype(node.bound, allow_float32=False)
    wh = torch.from_numpy(np.asarray(node.arrays["wh"], dtype=np.int64)).to(dt)
    wwt = torch.from_numpy(np.ascontiguousarray(np.asarray(node.arrays["ww"], dtype=np.int64).T)).to(dt)

    def run(xs: list[torch.Tensor], _st: dict[str, int]) -> torch.Tensor:
        return torch.matmul(torch.matmul(wh, xs[0].to(dt)), wwt)

    return run


def _lut(node: IntNode, bounds: dict[str, int], products: str) -> Kernel:
    table = torch.from_numpy(np.asarray(node.arrays["table"], dtype=np.int64)).to(exact_dtype(node.bound))
    offset = int(node.attrs["in_qmin"])
    return lambda xs, _st: table[xs[0].to(torch.int64) - offset]


MOVE_KERNELS: dict[str, Callable[[IntNode, dict[str, int], str], Kernel]] = {
    "reshape": _reshape, "transpose": _transpose, "slice": _slice, "zeros": _zeros,
    "gather": _gather, "pad": _pad, "zero_insert": _zero_insert, "pixel_shuffle": _pixel_shuffle,
    "upsample": _upsample, "interp": _interp, "lut": _lut,
}
