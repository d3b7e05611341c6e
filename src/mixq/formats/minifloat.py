"""Minifloats: sign, ``exp_bits`` exponent, ``man_bits`` mantissa (covers FP8 E4M3/E5M2, FP4 E2M1).

Value of a code (exponent field ``E``, mantissa field ``M``)::

    E == 0:  (-1)^s · M / 2^man_bits · 2^(1 - bias)          (subnormal)
    E >= 1:  (-1)^s · (1 + M / 2^man_bits) · 2^(E - bias)    (normal)

``special`` says which codes are not finite numbers:

* ``"none"``  every code is finite (FPGA-style minifloat, OCP FP4/FP6);
* ``"ieee"``  the all-ones exponent holds inf/NaN (OCP E5M2: max 57344);
* ``"fn"``    only the all-ones exponent with all-ones mantissa is NaN (OCP E4M3: max 448).

Quantization is nearest-level and **saturating**: values beyond the largest
finite level map to it (no inf), values below half the smallest subnormal map
to zero. Integer levels: ``q = M`` for subnormals and ``(2^man_bits + M) << (E - 1)``
for normals, with ``frac_bits = bias + man_bits - 1``; ``decompose`` is the CSD of ``q``.

>>> float(MiniFloat(4, 3, 7, special="fn").levels().max()), float(MiniFloat(5, 2, 15, "ieee").levels().max())
(448.0, 57344.0)
>>> [float(v) for v in MiniFloat(2, 1).levels() if v >= 0]
[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixq.errors import FormatError
from mixq.formats._common import INT64_SAFE, TableFormat, check_int
from mixq.formats.fixed import csd

SPECIALS = ("none", "ieee", "fn")


@functools.lru_cache(maxsize=64)
def _pos_ints(exp_bits: int, man_bits: int, special: str) -> tuple[int, ...]:
    top = 2**exp_bits - 1
    out = []
    for e in range(top + 1):
        for m in range(2**man_bits):
            if special == "ieee" and e == top:
                continue
            if special == "fn" and e == top and m == 2**man_bits - 1:
                continue
            out.append(m if e == 0 else (2**man_bits + m) << (e - 1))
    return tuple(sorted(set(out)))


@functools.lru_cache(maxsize=64)
def _pos_set(exp_bits: int, man_bits: int, special: str) -> frozenset[int]:
    return frozenset(_pos_ints(exp_bits, man_bits, special))


@dataclass(frozen=True)
class MiniFloat(TableFormat):
    """Sign + ``exp_bits`` + ``man_bits``; ``bias`` defaults to ``2^(exp_bits-1) - 1``."""

    exp_bits: int = 4
    man_bits: int = 3
    bias: int | None = None
    special: str = "none"

    def __post_init__(self) -> None:
        check_int("exp_bits", self.exp_bits, 1, 6, "minifloat")
        check_int("man_bits", self.man_bits, 0, 10, "minifloat")
        if self.bias is not None:
            check_int("bias", self.bias, -64, 64, "minifloat")
        if self.special not in SPECIALS:
            raise FormatError(f"minifloat.special: {self.special!r} is not one of {', '.join(SPECIALS)}")
        if self.special == "ieee" and self.exp_bits < 2:
            raise FormatError("minifloat.special: 'ieee' needs at least 2 exponent bits")
        if self.special == "fn" and self.exp_bits + self.man_bits < 2:
            raise FormatError("minifloat.special: 'fn' needs at least 2 exponent+mantissa bits")
        if _pos_ints(self.exp_bits, self.man_bits, self.special)[-1] >= INT64_SAFE:
            raise FormatError(f"minifloat.exp_bits: {self} has integer levels beyond 2**62")

    kind = "minifloat"
    shift_add = False  # the integer engine multiplies (mixq.engine.kernels)

    @property
    def eff_bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1 if self.bias is None else self.bias

    @property
    def frac_bits(self) -> int:
        return self.eff_bias + self.man_bits - 1

    @property
    def storage_bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    def int_levels(self) -> np.ndarray:
        pos = np.array(_pos_ints(self.exp_bits, self.man_bits, self.special), dtype=np.int64)
        return np.concatenate([-pos[:0:-1], pos])

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]:
        if abs(int(q)) not in _pos_set(self.exp_bits, self.man_bits, self.special):
            raise FormatError(f"{self}: {q} is not a level of this format")
        return csd(int(q))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "minifloat", "exp_bits": self.exp_bits, "man_bits": self.man_bits,
                "bias": self.bias, "special": self.special}

    def __str__(self) -> str:
        s = f"minifloat_e{self.exp_bits}m{self.man_bits}"
        if self.bias is not None:
            s += f"_b{self.bias}"
        return s if self.special == "none" else s + f"({self.special})"
