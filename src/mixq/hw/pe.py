"""`PeConfig`: the plain-data description of one processing element (PE).

The same description is read by the cost model (:mod:`mixq.hw.cost`), by the
Verilog generators (:mod:`mixq.rtl.pe`) and by the calibration fit
(:mod:`mixq.hw.calibrate`), so a PE means one and the same circuit everywhere.

A *dot unit* is one output row's worth of a matrix-vector engine: ``simd``
lanes each forming one product per cycle, a pipelined adder tree over the
lanes, and an accumulator that restarts at the first beat of every output.
The kinds of dot unit differ in how a lane forms its product:

========== ============================================================ =========
kind       product                                                      resource
========== ============================================================ =========
fixed_lut  signed ``wbits`` x ``abits`` multiply                         LUTs
fixed_dsp  the same multiply, one per DSP; lanes chained on the DSP      DSPs
           post-adders (systolic, no LUT tree)
fixed_dsp2 two rows' products of one activation packed in one DSP:      DSPs
           ``a * (w_hi * 2**S + w_lo)`` (two outputs per unit)
sp2        ``a * ±(2**-e1 + 2**-e2)``: two variable shifts and an add     LUTs
pot        ``a * ±2**-e``: one variable shift                            LUTs
ternary    ``a * {-1, 0, +1}``: a select                                 LUTs
xnor       binary weight x binary activation: XNOR, popcount             LUTs
========== ============================================================ =========

Components, also calibrated on their own: ``tree`` (``simd`` inputs of
``abits`` bits), ``acc`` (accumulator of ``accw`` bits fed ``abits`` bits),
``requant`` (dyadic ``acc * M >> n``, round, clamp to ``out_bits``; a DSP
multiply), ``thresh`` (``2**out_bits - 1`` threshold comparators, FINN style),
``ram`` (``wbits`` wide x ``simd`` deep memory; ``abits`` = 1 for block RAM,
0 for LUTRAM).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mixq.errors import HardwareError

DOT_KINDS = ("fixed_lut", "fixed_dsp", "fixed_dsp2", "sp2", "pot", "ternary", "xnor")
COMPONENT_KINDS = ("tree", "acc", "requant", "thresh", "ram")
PE_KINDS = DOT_KINDS + COMPONENT_KINDS

REQUANT_MULT_BITS = 16  # width of the dyadic multiplier M


def requant_shift(accw: int, out_bits: int) -> int:
    """The right shift of the generated requantizer (``M`` is ``REQUANT_MULT_BITS`` wide)."""
    return REQUANT_MULT_BITS + max(accw - out_bits, 0) // 2


def sp2_split(wbits: int) -> tuple[int, int]:
    """Exponent-field widths ``(m1, m2)`` of an SP2 code of ``wbits`` (sign + m1 + m2, m1 >= m2).

    >>> sp2_split(4)
    (2, 1)
    """
    if wbits < 3:
        raise HardwareError(f"SP2 needs at least 3 bits (sign + two exponent fields), got {wbits}")
    m1 = math.ceil((wbits - 1) / 2)
    return m1, wbits - 1 - m1


def shift_range(kind: str, wbits: int) -> int:
    """``F``: the largest exponent field value; terms are ``2**(F - e)`` for ``e`` in 1..F."""
    if kind == "sp2":
        return 2 ** sp2_split(wbits)[0] - 1
    if kind == "pot":
        return 2 ** (wbits - 1) - 1
    return 0


def product_width(kind: str, wbits: int, abits: int, signed_act: bool = False) -> int:
    """Bits of one lane's signed product (weights signed, activations unsigned unless ``signed_act``).

    >>> product_width("fixed_lut", 4, 4), product_width("sp2", 4, 4), product_width("pot", 4, 4)
    (8, 8, 11)
    """
    # Signed results hold the negation of the most negative value too; the same width
    # serves signed and unsigned activations (an unsigned ``abits`` operand is ``abits + 1``
    # bits signed, a signed one needs the extra bit for -(-2**(abits-1))).
    del signed_act
    if kind in ("fixed_lut", "fixed_dsp", "fixed_dsp2"):
        return wbits + abits
    if kind == "sp2":
        return abits + shift_range(kind, wbits) + 1
    if kind == "pot":
        return abits + shift_range(kind, wbits)
    if kind == "ternary":
        return abits + 1
    if kind == "xnor":
        return 1
    raise HardwareError(f"product_width: {kind!r} is not a dot-unit kind ({', '.join(DOT_KINDS)})")


def acc_width(pw: int, acc_len: int) -> int:
    """Accumulator bits for ``acc_len`` products of ``pw`` bits: ``pw + ceil(log2(acc_len))``.

    >>> acc_width(8, 4608)
    21
    """
    return pw + max(0, math.ceil(math.log2(max(acc_len, 1))))


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


# Largest packed-weight operand and activation operand of one DSP, by DSP type (signed widths):
# DSP48E1 25 x 18 (DS190/UG479), DSP48E2 27 x 18 (UG579). Intel blocks are not packed.
DSP_PORTS = {"DSP48E1": (25, 18), "DSP48E2": (27, 18)}
DSP_MIN_PRODUCT = 9  # yosys maps a multiply to a DSP only when its product is >= 9 bits wide


def pack_shift(wbits: int, abits: int, acc_len: int, signed_act: bool = False) -> int:
    """``S``: the lower field of a packed DSP word holds a whole accumulated row of products."""
    return acc_width(product_width("fixed_dsp2", wbits, abits, signed_act), acc_len)


def dsp_packing(dsp_type: str, wbits: int, abits: int, acc_len: int, signed_act: bool = False) -> int:
    """Products one DSP computes per cycle for a ``wbits`` x ``abits`` fixed-point row of ``acc_len``.

    Two (weights of two rows times one shared activation, ``a * (w_hi * 2**S + w_lo)``, as in
    Xilinx WP486) when the packed operand ``S + wbits`` fits the DSP's wide port and the
    activation its narrow port; else one. Intel variable-precision blocks hold two 18x19
    multipliers natively: two when both operands fit 18x19.

    >>> dsp_packing("DSP48E1", 4, 4, 4608), dsp_packing("DSP48E1", 8, 8, 64)
    (2, 1)
    """
    a_op = abits + (0 if signed_act else 1)
    if dsp_type in DSP_PORTS:
        wide, narrow = DSP_PORTS[dsp_type]
        s = pack_shift(wbits, abits, acc_len, signed_act)
        return 2 if (s + wbits <= wide and a_op <= narrow and 2 * s <= 48) else 1
    if dsp_type == "S10-VPDSP":
        return 2 if max(wbits, a_op) <= 19 and min(wbits, a_op) <= 18 else 1
    raise HardwareError(f"unknown DSP type {dsp_type!r}; known: {', '.join([*DSP_PORTS, 'S10-VPDSP'])}")


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


@dataclass(frozen=True)
class PeConfig:
    """One PE (see the module docstring for the kinds and what each field means per kind).

    ``acc_len`` (products per output) sets the accumulator width of dot units;
    ``accw`` overrides it (and is the input width of ``requant`` / ``thresh``).
    """

    kind: str
    wbits: int = 0
    abits: int = 0
    simd: int = 1
    acc_len: int = 512
    accw: int = 0
    out_bits: int = 0
    signed_act: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PE_KINDS:
            raise HardwareError(f"PE kind {self.kind!r} is unknown; known: {', '.join(PE_KINDS)}")
        if self.simd < 1:
            raise HardwareError(f"PE {self.kind}: simd must be >= 1, got {self.simd}")

    @property
    def product_bits(self) -> int:
        return product_width(self.kind, self.wbits, self.abits, self.signed_act)

    @property
    def acc_bits(self) -> int:
        """Accumulator width (dot units, ``acc``) or input width (``requant``, ``thresh``)."""
        if self.accw:
            return self.accw
        if self.kind == "xnor":
            return acc_width(1, self.acc_len) + 1
        return acc_width(self.product_bits, self.acc_len)

    @property
    def name(self) -> str:
        """A short unique module name, e.g. ``sp2_w4a4_s8_acc19``."""
        k = self.kind
        if k in DOT_KINDS:
            sa = "s" if self.signed_act else ""
            return f"{k}_w{self.wbits}a{sa}{self.abits}_s{self.simd}_acc{self.acc_bits}"
        if k == "tree":
            return f"tree_n{self.simd}_b{self.abits}"
        if k == "acc":
            return f"acc_b{self.abits}_w{self.acc_bits}"
        if k in ("requant", "thresh"):
            return f"{k}_i{self.acc_bits}_o{self.out_bits}"
        return f"ram_w{self.wbits}_d{self.simd}_{'bram' if self.abits else 'lutram'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PeConfig:
        return PeConfig(**d)
