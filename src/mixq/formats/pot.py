"""Power-of-two (logarithmic) levels: ``q = ±2^-e`` or zero.

``bits`` = 1 sign bit + ``bits - 1`` exponent-code bits; one exponent code is
reserved for zero, so the magnitudes are ``{0, 2^0, 2^-1, ..., 2^-(2^(bits-1) - 2)}``.
A product with such a weight is a single shift (plus a sign).

>>> PowerOfTwo(3).levels().tolist()
[-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
>>> PowerOfTwo(3).int_levels().tolist()
[-4, -2, -1, 0, 1, 2, 4]
>>> PowerOfTwo(3).decompose(-2)
((-1, 1),)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixq.errors import FormatError
from mixq.formats._common import TableFormat, check_int


@dataclass(frozen=True)
class PowerOfTwo(TableFormat):
    """Sign + exponent with a zero code; ``bits`` in [2, 7] (the integer levels must fit int64)."""

    bits: int = 4

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 2, 7, "pot")

    kind = "pot"
    shift_add = True  # the integer engine computes its rows as shift-add planes (mixq.engine.kernels)

    @property
    def n_exponents(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def frac_bits(self) -> int:
        return self.n_exponents - 1

    @property
    def storage_bits(self) -> int:
        return self.bits

    def int_levels(self) -> np.ndarray:
        mags = [0] + [1 << k for k in range(self.n_exponents)]
        pos = np.array(mags, dtype=np.int64)
        return np.concatenate([-pos[:0:-1], pos])

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]:
        q = int(q)
        if q == 0:
            return ()
        m = abs(q)
        if m & (m - 1) or m.bit_length() - 1 > self.frac_bits:
            raise FormatError(f"pot{self.bits}: {q} is not a level of this format")
        return ((1 if q > 0 else -1, m.bit_length() - 1),)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "pot", "bits": self.bits}

    def __str__(self) -> str:
        return f"pot{self.bits}"
