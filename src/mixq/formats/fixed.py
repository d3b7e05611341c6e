"""Fixed point (uniform integers) and canonical signed digits (CSD).

``q = clamp(round(x / scale), qmin, qmax)``: the scale is the step size and
``frac_bits == 0``. Rounding is ``torch.round`` (ties to even, as IEEE and
PyTorch's own fake-quant do).

>>> f = FixedPoint(4, signed=True, narrow=True)
>>> (f.qmin, f.qmax, f.storage_bits)
(-7, 7, 4)
>>> csd(7)
((-1, 0), (1, 3))
>>> FixedPoint(8).decompose(-3)
((1, 0), (-1, 2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mixq.errors import FormatError
from mixq.formats import _common
from mixq.formats._common import check_bool, check_int

if TYPE_CHECKING:
    import torch


def csd(q: int) -> tuple[tuple[int, int], ...]:
    """Canonical signed-digit form of the integer ``q``: ``((sign, shift), ...)`` by increasing shift.

    No two non-zero digits are adjacent, so the digit count (what a shift-add
    multiplier costs) is minimal. ``sum(s * 2**k for s, k in csd(q)) == q``.

    >>> csd(0)
    ()
    >>> csd(-5)
    ((-1, 0), (-1, 2))
    >>> csd(15)
    ((-1, 0), (1, 4))
    """
    if isinstance(q, bool) or not isinstance(q, int | np.integer):
        raise FormatError(f"csd: expected an integer, got {q!r}")
    n = int(q)
    digits: list[tuple[int, int]] = []
    shift = 0
    while n != 0:
        if n & 1:
            d = 2 - (n & 3)  # +1 if n % 4 == 1, -1 if n % 4 == 3
            digits.append((d, shift))
            n -= d
        n >>= 1
        shift += 1
    return tuple(digits)


def csd_digits(q: torch.Tensor) -> torch.Tensor:
    """Vectorized count of non-zero CSD digits of every integer in ``q`` (int64 tensor).

    Uses the identity ``weight(CSD(n)) == popcount(3n XOR n)`` (the non-adjacent form of
    ``n`` is ``(3n >> 1) - (n >> 1)`` digit-wise).

    >>> import torch
    >>> csd_digits(torch.tensor([0, 1, 3, 7, -5, 15])).tolist()
    [0, 1, 2, 2, 2, 2]
    """
    return _common.kernels().csd_digits(q)


@dataclass(frozen=True)
class FixedPoint:
    """Uniform integer format: ``bits`` wide, ``signed`` or not, ``narrow`` drops the most
    negative code so the signed range is symmetric (``[-(2^(b-1)-1), 2^(b-1)-1]``)."""

    bits: int = 8
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 1 if not self.signed else 2, 32, "fixed")
        check_bool("signed", self.signed, "fixed")
        check_bool("narrow", self.narrow, "fixed")
        if self.narrow and not self.signed:
            raise FormatError("fixed.narrow: only meaningful for a signed format (signed=false given)")

    kind = "fixed"
    shift_add = False  # the integer engine multiplies (mixq.engine.kernels)

    @property
    def frac_bits(self) -> int:
        return 0

    @property
    def storage_bits(self) -> int:
        return self.bits

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -self.qmax if self.narrow else -(2 ** (self.bits - 1))

    @property
    def unit_max(self) -> float:
        """Min-max scaling maps ``max|x|`` to ``qmax`` (so ``scale = max|x| / qmax``)."""
        return float(self.qmax)

    def int_levels(self) -> np.ndarray:
        return np.arange(self.qmin, self.qmax + 1, dtype=np.int64)

    def levels(self) -> np.ndarray:
        return self.int_levels().astype(np.float64)

    def quantize(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """``clamp(round(x / scale), qmin, qmax)`` as int64 (ties to even)."""
        return (_common._K or _common.kernels()).fixed_quantize(x, scale, self.qmin, self.qmax)

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        return (_common._K or _common.kernels()).fixed_dequantize(q, scale)

    def snap(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Fake-quantized value in ``x``'s dtype (no int round-trip)."""
        return (_common._K or _common.kernels()).fixed_snap(x, scale, self.qmin, self.qmax)

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]:
        """The CSD digits of ``q``: the shift-add terms of a constant multiplier."""
        return csd(q)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "bits": self.bits, "signed": self.signed, "narrow": self.narrow}

    def __str__(self) -> str:
        return ("" if self.signed else "u") + f"fixed{self.bits}" + ("n" if self.narrow else "")
