"""The integer arithmetic of the engine: pure functions, one rounding rule.

Requantization (the only rounding inside the network)
-----------------------------------------------------
A real ratio ``r > 0`` between two grids is approximated by a *dyadic*
multiplier ``M * 2**-n`` (``M`` an unsigned integer of ``mult_bits`` bits,
``2**(mult_bits-1) <= M < 2**mult_bits``, ``n >= 0``); an integer ``x`` is
requantized as

    requantize(x, M, n) = (x * M + 2**(n-1)) >> n        (n > 0; x * M when n == 0)

an arithmetic shift, i.e. ``floor(x * M / 2**n + 1/2)``: **round half up**
(towards +infinity). The same rule is used by the integer engine, by the
hardware-faithful fake-quant mode and by the generated RTL (``(p >>> n) + p[n-1]``).

>>> dyadic(0.1, 16)
(52429, 19)
>>> requantize(torch.tensor([25, -25, 15, -15]), torch.tensor(1), torch.tensor(1)).tolist()
[13, -12, 8, -7]
>>> signed_bits(127), signed_bits(128), signed_bits(0)
(8, 9, 1)
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_MULT_BITS = 16  # width of the dyadic multiplier M (the RTL requant unit uses 16 as well)
ROUNDING = "half_up"  # floor(x + 1/2) on the exact integer product
INT64_LIMIT = 2**62  # every integer the engine holds stays below this in magnitude
FLOAT64_EXACT = 2**53  # integers (and sums of integers) below this are exact in float64
FLOAT32_EXACT = 2**24  # ... and below this in float32


def dyadic(ratio: float, mult_bits: int = DEFAULT_MULT_BITS) -> tuple[int, int]:
    """``(M, n)`` with ``M * 2**-n`` the nearest ``mult_bits``-bit dyadic number to ``ratio`` (>= 0).

    ``n`` is as large as ``M < 2**mult_bits`` allows (``n >= 0``; a ratio too large for
    that gets ``n = 0`` and a wider ``M``). ``ratio == 0`` gives ``(0, 0)``.

    >>> dyadic(1.0, 8), dyadic(0.75, 4), dyadic(3.0, 2)
    ((128, 7), (12, 4), (3, 0))
    """
    if not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"dyadic: ratio must be finite and >= 0, got {ratio}")
    if ratio == 0:
        return 0, 0
    _, e = math.frexp(ratio)  # ratio = f * 2**e, 0.5 <= f < 1
    n = max(mult_bits - e, 0)
    m = round(math.ldexp(ratio, n))
    if m >= 2**mult_bits and n > 0:  # rounding carried into a new bit
        n -= 1
        m = round(math.ldexp(ratio, n))
    return int(m), int(n)


def dyadic_array(ratios: np.ndarray, mult_bits: int = DEFAULT_MULT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise :func:`dyadic`: int64 arrays ``M`` and ``n`` of the shape of ``ratios``."""
    r = np.asarray(ratios, dtype=np.float64)
    pairs = [dyadic(float(v), mult_bits) for v in r.reshape(-1)]
    m = np.array([p[0] for p in pairs], dtype=np.int64).reshape(r.shape)
    n = np.array([p[1] for p in pairs], dtype=np.int64).reshape(r.shape)
    return m, n


def dyadic_common(ratios: list[np.ndarray], mult_bits: int = DEFAULT_MULT_BITS
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """Multipliers for a sum ``sum_i x_i * r_i`` with one shift per element (a residual add).

    ``n`` is chosen for the largest ratio of each element, so that one rounding
    happens after the exact integer sum ``sum_i x_i * M_i``. A ratio that is a power
    of two times the largest (e.g. 1 for the operand already on the output grid)
    gets an exact ``M``.
    """
    rs = [np.asarray(r, dtype=np.float64) for r in np.broadcast_arrays(*ratios)]
    top = np.maximum.reduce(rs)
    _, n = dyadic_array(top, mult_bits)
    scale = np.ldexp(1.0, n)
    ms = [np.rint(r * scale).astype(np.int64) for r in rs]
    return ms, n


def half(n: torch.Tensor) -> torch.Tensor:
    """``2**(n-1)`` for ``n > 0`` and 0 for ``n == 0`` (the round-half-up offset)."""
    return torch.bitwise_left_shift(torch.ones_like(n), n) >> 1


def requantize(x: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``floor(x * m / 2**n + 1/2)`` on int64 tensors (broadcasting): round half up."""
    return torch.bitwise_right_shift(x * m + half(n), n)


def requantize_sum(xs: list[torch.Tensor], ms: list[torch.Tensor], n: torch.Tensor) -> torch.Tensor:
    """``floor(sum_i x_i * m_i / 2**n + 1/2)``: a rescaled sum with a single rounding."""
    acc = xs[0] * ms[0]
    for x, m in zip(xs[1:], ms[1:], strict=True):
        acc = acc + x * m
    return torch.bitwise_right_shift(acc + half(n), n)


def round_half_up(v: np.ndarray) -> np.ndarray:
    """``floor(v + 1/2)`` as int64 (real constants put on a grid: clamp limits)."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def signed_bits(bound: int) -> int:
    """Bits of a two's-complement register that holds every integer in ``[-bound, bound]``."""
    return int(bound).bit_length() + 1


def exact_dtype(bound: int, allow_float32: bool = True) -> torch.dtype:
    """Cheapest dtype in which sums of integers with ``sum |terms| <= bound`` are exact.

    Every partial sum of such a dot product, in any order, is an integer of magnitude
    at most ``bound``; IEEE arithmetic on integers whose exact results are
    representable is exact, so float32 below 2**24 and float64 below 2**53 compute it
    exactly (also with FMA and any summation order). Beyond that: int64.
    """
    if allow_float32 and bound < FLOAT32_EXACT:
        return torch.float32
    if bound < FLOAT64_EXACT:
        return torch.float64
    return torch.int64
