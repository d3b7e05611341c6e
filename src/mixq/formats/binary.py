"""Binary ``{-1, +1}`` and ternary ``{-1, 0, +1}`` weights.

Binary follows XNOR-Net: ``w ≈ α·sign(w)`` with ``α = mean|w|`` per output
channel (what ``mixq.quant.compute_scale`` returns for this format with the
``minmax`` or ``mse`` observer: it is the MSE-optimal α). Zero maps to ``+1``.

Ternary follows TWN: weights with ``|w| <= Δ``, ``Δ = threshold · mean|w|``
(0.7 by default), become zero. Quantization is nearest-level, whose zero band
is half the scale, so the TWN threshold is realised by the scale
``2·threshold·mean|w|`` (what ``compute_scale`` returns for ``minmax``).

>>> Ternary().levels().tolist(), Binary().decompose(-1)
([-1.0, 0.0, 1.0], ((-1, 0),))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixq.errors import FormatError
from mixq.formats._common import TableFormat


class _SignLevels(TableFormat):
    """Integer levels ``LEVELS`` at frac_bits 0 in ``storage_bits`` bits; a level is its own
    (sign, shift 0) term (zero: no term); the integer engine computes the rows as shift-add planes."""

    kind: str
    LEVELS: tuple[int, ...] = ()
    shift_add = True  # (mixq.engine.kernels)

    @property
    def frac_bits(self) -> int:
        return 0

    @property
    def storage_bits(self) -> int:
        return max(1, (len(self.LEVELS) - 1).bit_length())

    def int_levels(self) -> np.ndarray:
        return np.array(self.LEVELS, dtype=np.int64)

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]:
        q = int(q)
        if q not in self.LEVELS:
            raise FormatError(f"{self.kind}: {q} is not a level")
        return () if q == 0 else ((q, 0),)


@dataclass(frozen=True)
class Binary(_SignLevels):
    """Levels ``{-1, +1}``; one storage bit; products are XNOR-popcount."""

    kind = "binary"
    LEVELS = (-1, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "binary"}

    def __str__(self) -> str:
        return "binary"


@dataclass(frozen=True)
class Ternary(_SignLevels):
    """Levels ``{-1, 0, +1}``; two storage bits; ``threshold`` is TWN's Δ / mean|w| ratio."""

    threshold: float = 0.7

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < float(t) < 10:
            raise FormatError(f"ternary.threshold: expected a number in (0, 10), got {t!r}")

    kind = "ternary"
    LEVELS = (-1, 0, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "ternary", "threshold": float(self.threshold)}

    def __str__(self) -> str:
        return "ternary" if self.threshold == 0.7 else f"ternary(t={self.threshold})"
