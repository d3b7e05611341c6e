"""Shared machinery of the level-table formats (internal).

Every format except :class:`~mixq.formats.FixedPoint` quantizes by looking the
value up in its sorted level table: the nearest level is found with
``torch.bucketize`` on the midpoints between neighbouring levels, so the cost
is ``O(n log L)`` and fully vectorized. The torch kernels live in
:mod:`mixq.formats._torch`, loaded on the first tensor operation (:func:`kernels`), so
the formats import without torch.

Tie rule (a value exactly half-way between two levels): the level of *smaller
magnitude* wins (ties go toward zero); a tie exactly at zero (e.g. Binary's
levels ``{-1, +1}``) goes to the positive level. This keeps every table format
monotone and sign-symmetric (``q(-x) == -q(x)`` when the levels are).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from mixq.errors import FormatError

if TYPE_CHECKING:
    import torch

INT64_SAFE = 2**62


def check_int(name: str, value: Any, lo: int, hi: int | None = None, fmt: str = "format") -> int:
    """Validate an integer field of a format, raising :class:`FormatError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FormatError(f"{fmt}.{name}: expected an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise FormatError(f"{fmt}.{name}: must be {rng}, got {v}")
    return v


def check_bool(name: str, value: Any, fmt: str = "format") -> bool:
    if not isinstance(value, bool | np.bool_):
        raise FormatError(f"{fmt}.{name}: expected true/false, got {value!r}")
    return bool(value)


def dyadic_ints(levels: np.ndarray, frac_bits: int, where: str) -> np.ndarray:
    """``levels * 2**frac_bits`` as exact int64, or :class:`FormatError` if not dyadic/in range."""
    scaled = np.asarray(levels, dtype=np.float64) * (2.0**frac_bits)
    q = np.rint(scaled)
    if not np.array_equal(q, scaled):
        raise FormatError(f"{where}: levels are not multiples of 2**-{frac_bits}")
    if q.size and np.max(np.abs(q)) >= INT64_SAFE:
        raise FormatError(f"{where}: integer levels exceed 2**62; choose fewer bits / a smaller range")
    return q.astype(np.int64)


_K: ModuleType | None = None


def kernels() -> ModuleType:
    """:mod:`mixq.formats._torch` (imports torch on the first call; a global read after that).

    Hot paths read ``_K or kernels()``: one global lookup per call once loaded.
    """
    global _K
    if _K is None:
        from mixq.formats import _torch

        _K = _torch
    return _K


# the torch kernels that used to live here, still importable from this module (loaded on first use)
_FORWARDED = ("scale_tensor", "out_dtype", "nearest_index", "bucketize_index", "_torch_table", "_fast_tables",
              "_fast_index", "_Side", "_LUT_MAX")


def __getattr__(name: str) -> Any:
    if name in _FORWARDED:
        return getattr(kernels(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TableFormat:
    """Mixin: quantize/dequantize through the sorted level table.

    Subclasses (frozen dataclasses) implement ``int_levels()`` and ``frac_bits``.
    """

    @property
    def frac_bits(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def int_levels(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def levels(self) -> np.ndarray:
        """Sorted unit-scale levels (float64): ``int_levels() * 2**-frac_bits``."""
        return np.asarray(self.int_levels(), dtype=np.float64) * (2.0 ** -self.frac_bits)

    @property
    def unit_max(self) -> float:
        """Unit-scale magnitude that an observed ``max|x|`` is mapped to by min-max scaling."""
        return float(np.max(np.abs(self.levels())))

    @property
    def signed(self) -> bool:
        """True when the format has negative levels."""
        return bool(self.levels()[0] < 0)

    def quantize(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Integer levels ``q`` (int64) of the nearest level to ``x / scale``."""
        return (_K or kernels()).table_quantize(self, x, scale)

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """``q * 2**-frac_bits * scale`` as a float tensor (dtype of ``scale`` if it is a float tensor)."""
        return (_K or kernels()).table_dequantize(self.frac_bits, q, scale)

    def snap(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Fake-quantized value (nearest level times scale) in ``x``'s dtype, without the int round-trip."""
        return (_K or kernels()).table_snap(self, x, scale)


def is_pow2(v: float) -> bool:
    if v <= 0:
        return False
    m, _ = math.frexp(v)
    return m == 0.5
