"""The contract every number format follows.

A format is a frozen dataclass (no torch state) describing a finite set of
levels. Every level is *dyadic*: ``level = q * 2**-frac_bits`` for an integer
``q``. The integer ``q`` is what the hardware computes with and what
``quantize`` returns ("integer values" or "codes"); ``dequantize`` maps it back:

    x_hat = q * 2**-frac_bits * scale

so the integer engine can fold ``scale * 2**-frac_bits`` into its dyadic
requantization multiplier and never see a non-integer weight.

* ``levels()``       sorted unit-scale levels (float64 numpy array)
* ``int_levels()``   the same levels as integers q (int64 numpy array)
* ``quantize(x, scale)``  nearest level (ties defined per format) -> int64 tensor q
* ``dequantize(q, scale)`` -> float tensor
* ``decompose(q)``   the (sign, shift) terms the hardware executes: sum(sign * 2**shift) == q;
                      empty tuple for zero
* ``storage_bits``   bits one stored weight takes
* ``to_dict()`` / ``format_from_dict(d)``  the JSON form used by the plan
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@runtime_checkable
class NumberFormat(Protocol):
    """Protocol implemented by every format in :mod:`mixq.formats`."""

    @property
    def kind(self) -> str:
        """Registry key, e.g. ``"fixed"``, ``"sp2"``."""
        ...

    @property
    def frac_bits(self) -> int:
        """Levels are ``int_levels() * 2**-frac_bits``."""
        ...

    @property
    def storage_bits(self) -> int:
        """Bits one stored value takes."""
        ...

    def levels(self) -> np.ndarray: ...

    def int_levels(self) -> np.ndarray: ...

    def quantize(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor: ...

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor: ...

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]: ...

    def to_dict(self) -> dict[str, Any]: ...
