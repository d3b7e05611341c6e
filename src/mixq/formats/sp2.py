"""Sum of powers of two: SP2 (Mix and Match, HPCA 2021) and APoT-style k-term formats.

SP2 with ``bits = m`` uses one sign bit and ``m - 1 = m1 + m2`` magnitude bits
(``m1 >= m2``, split as evenly as possible)::

    q = ±(q1 + q2),  q1 ∈ {0, 2^-1, ..., 2^-(2^m1 - 1)},  q2 ∈ {0, 2^-1, ..., 2^-(2^m2 - 1)}

so the largest magnitude is ``2^-1 + 2^-1 = 1`` and a product is two shifts
and an add. With ``terms = k`` the ``bits - 1`` magnitude bits are split over
``k`` such term sets (largest first); the levels are the distinct sums, whose
maximum is ``k / 2`` (the natural range; min-max scaling maps ``max|x|`` to it).

The integer levels are ``q * 2**frac_bits`` with ``frac_bits = 2^m1 - 1`` (the
smallest term), and ``decompose`` gives the terms the hardware adds.

>>> [float(v) for v in SumOfPowers(4).levels() if v >= 0]
[0.0, 0.125, 0.25, 0.5, 0.625, 0.75, 1.0]
>>> SumOfPowers(4).decompose(5)  # 5/8 = q1 + q2 = 1/8 + 1/2, terms in (q1, q2) order
((1, 0), (1, 2))
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixq.errors import FormatError
from mixq.formats._common import TableFormat, check_int


def split_bits(m: int, terms: int) -> tuple[int, ...]:
    """Magnitude bits ``m`` split over ``terms`` term sets, as evenly as possible, largest first.

    >>> split_bits(3, 2), split_bits(4, 2), split_bits(7, 2)
    ((2, 1), (2, 2), (4, 3))
    """
    base, extra = divmod(m, terms)
    return tuple(base + (1 if i < extra else 0) for i in range(terms))


@functools.lru_cache(maxsize=64)
def _table(bits: int, terms: int) -> tuple[int, dict[int, tuple[int, ...]]]:
    """(frac_bits, {positive int level: term shifts}) for SumOfPowers(bits, terms)."""
    ms = split_bits(bits - 1, terms)
    frac = 2 ** ms[0] - 1
    # term set i: shifts of the integer level (None = the zero term); 2^-j -> shift frac - j
    sets = [[None] + [frac - j for j in range(1, 2**mi)] for mi in ms]
    best: dict[int, tuple[int, ...]] = {}
    for combo in itertools.product(*sets):
        shifts = tuple(s for s in combo if s is not None)
        q = sum(1 << s for s in shifts)
        cur = best.get(q)
        # prefer fewer terms, then larger leading shifts (deterministic choice)
        key = (len(shifts), tuple(-s for s in shifts))
        if cur is None or key < (len(cur), tuple(-s for s in cur)):
            best[q] = shifts
    return frac, best


@dataclass(frozen=True)
class SumOfPowers(TableFormat):
    """``terms`` powers of two summed, with a sign: SP2 when ``terms == 2``. ``bits`` in [3, 10]."""

    bits: int = 4
    terms: int = 2

    def __post_init__(self) -> None:
        check_int("terms", self.terms, 1, 4, "sp2")
        check_int("bits", self.bits, self.terms + 1, 10, "sp2")

    kind = "sp2"
    shift_add = True  # the integer engine computes its rows as shift-add planes (mixq.engine.kernels)

    @property
    def term_bits(self) -> tuple[int, ...]:
        """Bits of each term's exponent code (``m1, m2, ...``)."""
        return split_bits(self.bits - 1, self.terms)

    @property
    def frac_bits(self) -> int:
        return _table(self.bits, self.terms)[0]

    @property
    def storage_bits(self) -> int:
        return self.bits

    def int_levels(self) -> np.ndarray:
        pos = np.array(sorted(_table(self.bits, self.terms)[1]), dtype=np.int64)
        return np.concatenate([-pos[:0:-1], pos])

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]:
        q = int(q)
        shifts = _table(self.bits, self.terms)[1].get(abs(q))
        if shifts is None:
            raise FormatError(f"{self}: {q} is not a level of this format")
        sign = 1 if q > 0 else -1
        return tuple((sign, s) for s in shifts)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "sp2", "bits": self.bits, "terms": self.terms}

    def __str__(self) -> str:
        return f"sp2_{self.bits}" if self.terms == 2 else f"sp{self.terms}_{self.bits}"
