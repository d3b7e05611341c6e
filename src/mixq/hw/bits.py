"""Bit arithmetic of the generated circuits (no state): widths, adder trees, DSP mapping rules.

Shared by the PE-kind table (:mod:`mixq.hw.kinds`), :class:`mixq.hw.pe.PeConfig` and the
Verilog generators, so a width means one and the same thing everywhere.
"""

from __future__ import annotations

import math

from mixq.errors import HardwareError

REQUANT_MULT_BITS = 16  # width of the dyadic multiplier M

# Largest packed-weight operand and activation operand of one DSP, by DSP type (signed widths):
# DSP48E1 25 x 18 (DS190/UG479), DSP48E2 27 x 18 (UG579). Intel blocks are not packed.
DSP_PORTS = {"DSP48E1": (25, 18), "DSP48E2": (27, 18)}
DSP_MIN_PRODUCT = 9  # yosys maps a multiply to a DSP only when its product is >= 9 bits wide


def requant_shift(accw: int, out_bits: int) -> int:
    """The right shift of the generated requantizer (``M`` is ``REQUANT_MULT_BITS`` wide)."""
    return REQUANT_MULT_BITS + max(accw - out_bits, 0) // 2


def sp2_split(wbits: int, m1: int = 0) -> tuple[int, int]:
    """Exponent-field widths ``(m1, m2)`` of an SP2 code of ``wbits`` (sign + m1 + m2, m1 >= m2 >= 1).

    ``m1`` chooses the split (0: the balanced default, ``m1 = ceil((wbits - 1) / 2)``).

    >>> sp2_split(4), sp2_split(5), sp2_split(5, 3)
    ((2, 1), (2, 2), (3, 1))
    """
    if wbits < 3:
        raise HardwareError(f"SP2 needs at least 3 bits (sign + two exponent fields), got {wbits}")
    m1 = m1 or math.ceil((wbits - 1) / 2)
    m2 = wbits - 1 - m1
    if not 1 <= m2 <= m1:
        raise HardwareError(f"SP2 split ({m1}, {m2}) of a {wbits}-bit code: need m1 >= m2 >= 1")
    return m1, m2


def acc_width(pw: int, acc_len: int) -> int:
    """Accumulator bits for ``acc_len`` products of ``pw`` bits: ``pw + ceil(log2(acc_len))``.

    >>> acc_width(8, 4608)
    21
    """
    return pw + max(0, math.ceil(math.log2(max(acc_len, 1))))


# The integer engine's widths of an exact residual stream (`mixq.engine.convert.EngineConfig`'s defaults; hw may not
# import the engine, `tests/test_residual_pricing.py` checks they agree): an accumulator budget, the fractional bits
# it spends on the bias grid, the guard bits an add keeps below its coarser operand, and the cap of a residual sum.
ENGINE_ACC_BITS, ENGINE_FRAC_BITS, ENGINE_GUARD_BITS, ENGINE_SUM_BITS = 32, 8, 8, 40


def exact_operand_bits(pw: int, acc_len: int) -> int:
    """Bits of a layer's accumulator where a residual add reads it unquantized: the worst-case sum of ``acc_len``
    products of ``pw`` bits and the engine's fractional bits, within its accumulator budget.

    >>> exact_operand_bits(16, 144), exact_operand_bits(8, 144)
    (32, 24)
    """
    return min(ENGINE_ACC_BITS, acc_width(pw, acc_len) + ENGINE_FRAC_BITS)


def exact_sum_bits(layer_bits: list[int], stream_bits: list[int]) -> int:
    """Bits of an exact residual sum: on a grid ``ENGINE_GUARD_BITS`` finer than an accumulator it adds (a
    bound: the grids' ratio is data), one more than a stream it extends, at most ``ENGINE_SUM_BITS``.
    Measured on the engine (W8A8 / W4A4 ResNet-20, W8A8 MobileNetV2): 38-40 / 30-34 / 39-40 bits, this bound
    40 / 33-37 / 40.

    >>> exact_sum_bits([32], [28]), exact_sum_bits([24], [33]), exact_sum_bits([], [8])
    (40, 34, 9)
    """
    widest = max([b + ENGINE_GUARD_BITS + 1 for b in layer_bits] + [b + 1 for b in stream_bits])
    return min(ENGINE_SUM_BITS, widest)


def tree_levels(n: int) -> list[int]:
    """Adders per level of a binary tree over ``n`` inputs (odd leftovers pass through).

    >>> tree_levels(5)
    [2, 1, 1]
    """
    out = []
    while n > 1:
        out.append(n // 2)
        n = n - n // 2
    return out


def tree_bits(n: int, width: int) -> int:
    """Total adder bits of a tree over ``n`` inputs of ``width`` bits (each level one bit wider).

    >>> tree_bits(4, 8)
    28
    """
    return sum(k * (width + i + 1) for i, k in enumerate(tree_levels(n)))


def mul_dsps(a_width: int, b_width: int, y_width: int | None = None, dsp_type: str = "DSP48E1") -> int:
    """DSP blocks a signed ``a_width`` x ``b_width`` multiply with a ``y_width`` result takes
    (the yosys ``mul2dsp`` rule; ``y_width`` defaults to the full product).

    No DSP below a 9-bit result or a 2-bit operand; one up to the port widths; the wide
    operand split into chunks above them.

    >>> mul_dsps(4, 5, 8), mul_dsps(24, 17), mul_dsps(32, 17)
    (0, 1, 2)
    """
    a, b = max(a_width, b_width), min(a_width, b_width)
    y = a + b if y_width is None else y_width
    if y < DSP_MIN_PRODUCT or b < 2:
        return 0
    wide, narrow = DSP_PORTS.get(dsp_type, (27, 18))
    na = 1 if a <= wide else 1 + math.ceil((a - wide) / (narrow - 1))
    nb = 1 if b <= narrow else 1 + math.ceil((b - narrow) / (narrow - 1))
    return na * nb
