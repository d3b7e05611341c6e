"""Posits (type III unums): ``bits`` wide with ``es`` exponent bits.

A positive posit is ``useed^k · 2^e · (1 + f)`` with ``useed = 2^(2^es)``, ``k``
from the regime run length, ``e`` the (possibly truncated) exponent and ``f``
the remaining fraction; negatives are two's complements; ``100...0`` (NaR) is
excluded. Levels span ``[-maxpos, maxpos]`` with ``maxpos = useed^(bits-2)``.

Min-max scaling maps ``max|x|`` to ``useed`` (see ``unit_max``); larger values
still round to the sparser levels above it. Quantization here is nearest-level in value (ties toward zero) with
saturation at ``±maxpos`` and underflow to zero — this differs from the posit
standard only in the tapered tails, where the standard rounds on the bit
pattern and never rounds a non-zero value to zero. Integer levels are
``q = value · 2^frac_bits`` with ``frac_bits = (bits - 2) · 2^es``;
``decompose`` is the CSD of ``q``.

>>> p = Posit(8, 1)
>>> float(p.levels().max()), float(p.levels()[p.levels() > 0].min()), len(p.levels())
(4096.0, 0.000244140625, 255)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from mixq.errors import FormatError
from mixq.formats._common import INT64_SAFE, TableFormat, check_int
from mixq.formats.fixed import csd


def decode_posit(pattern: int, bits: int, es: int) -> Fraction:
    """Exact value of a posit bit pattern (NaR raises)."""
    mask = (1 << bits) - 1
    pattern &= mask
    if pattern == 0:
        return Fraction(0)
    if pattern == 1 << (bits - 1):
        raise FormatError(f"posit{bits}_{es}: NaR has no value")
    sign = pattern >> (bits - 1)
    if sign:
        pattern = (-pattern) & mask
    body = [(pattern >> i) & 1 for i in range(bits - 2, -1, -1)]  # bits after the sign, MSB first
    first = body[0]
    run = 1
    while run < len(body) and body[run] == first:
        run += 1
    k = run - 1 if first == 1 else -run
    rest = body[run + 1:]  # skip the regime terminator
    e_bits = rest[:es]
    e = 0
    for b in e_bits:
        e = 2 * e + b
    e <<= es - len(e_bits)  # truncated exponent bits are zeros
    frac_bits = rest[es:]
    f = Fraction(0)
    for i, b in enumerate(frac_bits):
        f += Fraction(b, 2 ** (i + 1))
    v = Fraction(2) ** (k * 2**es + e) * (1 + f)
    return -v if sign else v


@functools.lru_cache(maxsize=32)
def _pos_ints(bits: int, es: int) -> tuple[int, ...]:
    frac = (bits - 2) * 2**es
    out = []
    for p in range(1, 1 << (bits - 1)):
        v = decode_posit(p, bits, es) * 2**frac
        if v.denominator != 1:  # pragma: no cover - posits are dyadic above minpos
            raise FormatError(f"posit{bits}_{es}: level {v} is not dyadic at frac_bits={frac}")
        out.append(int(v))
    return tuple(sorted(out))


@functools.lru_cache(maxsize=64)
def _pos_set(bits: int, es: int) -> frozenset[int]:
    return frozenset(_pos_ints(bits, es))


@dataclass(frozen=True)
class Posit(TableFormat):
    """``bits`` in [2, 16], ``es`` in [0, 3]; integer levels must fit int64 (e.g. posit16_2 does not)."""

    bits: int = 8
    es: int = 1

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 2, 16, "posit")
        check_int("es", self.es, 0, 3, "posit")
        if 2 ** (2 * (self.bits - 2) * 2**self.es) >= INT64_SAFE:
            raise FormatError(f"posit.es: posit{self.bits}_{self.es} spans beyond 2**62 in integer levels")

    kind = "posit"
    shift_add = False  # the integer engine multiplies (mixq.engine.kernels)

    @property
    def frac_bits(self) -> int:
        return (self.bits - 2) * 2**self.es

    @property
    def storage_bits(self) -> int:
        return self.bits

    @property
    def useed(self) -> float:
        return float(2 ** (2**self.es))

    @property
    def unit_max(self) -> float:
        """Min-max scaling maps ``max|x|`` to ``useed``, not to ``maxpos``: posits are most
        precise around ±1, and data squeezed below ``maxpos`` would sit in the tapered tails
        (benchmarks/results/design_measurements.md, "Posit scaling")."""
        return min(self.useed, float(self.levels().max()))

    def int_levels(self) -> np.ndarray:
        pos = np.array((0, *_pos_ints(self.bits, self.es)), dtype=np.int64)
        return np.concatenate([-pos[:0:-1], pos])

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]:
        if int(q) != 0 and abs(int(q)) not in _pos_set(self.bits, self.es):
            raise FormatError(f"{self}: {q} is not a level of this format")
        return csd(int(q))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "posit", "bits": self.bits, "es": self.es}

    def __str__(self) -> str:
        return f"posit{self.bits}_{self.es}"
