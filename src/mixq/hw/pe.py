"""`PeConfig`: the plain-data description of one processing element (PE).

The same description is read by the cost model (:mod:`mixq.hw.cost`), by the
Verilog generators (:mod:`mixq.rtl.pe`) and by the calibration fit
(:mod:`mixq.hw.fit`), so a PE means one and the same circuit everywhere.

A *dot unit* is one output row's worth of a matrix-vector engine: ``simd``
lanes each forming one product per cycle, a pipelined adder tree over the
lanes, and an accumulator that restarts at the first beat of every output.
The kinds of dot unit differ in how a lane forms its product (each kind is one record of
:data:`mixq.hw.kinds.PE_KINDS`, which holds its rules):

========== ============================================================ =========
kind       product                                                      resource
========== ============================================================ =========
fixed_lut  signed ``wbits`` x ``abits`` multiply                         LUTs
fixed_dsp  the same multiply, one per DSP; lanes chained on the DSP      DSPs
           post-adders (systolic, no LUT tree); one lane is a whole
           DSP multiply-accumulate (P register); products under 9
           bits are built in LUTs by yosys (0 DSPs)
fixed_dsp2 two rows' products of one activation packed in one DSP:      DSPs
           ``a * (w_hi * 2**S + w_lo)`` (two outputs per unit)
sp2        ``a * (2**-e1 + 2**-e2)``: two variable shifts and an add;     LUTs
           the sign folded into the adder tree (ones' complement
           and the carry-ins); ``sp2_m1`` chooses the exponent split
pot        ``a * 2**-e``: one variable shift; the sign as in sp2          LUTs
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

from dataclasses import KW_ONLY, asdict, dataclass
from typing import Any

from mixq.errors import HardwareError
from mixq.hw.bits import (
    DSP_MIN_PRODUCT,
    DSP_PORTS,
    REQUANT_MULT_BITS,
    acc_width,
    mul_dsps,
    requant_shift,
    sp2_split,
    tree_bits,
    tree_levels,
)
from mixq.hw.kinds import COMPONENT_KINDS, DOT_KINDS, PE_KINDS

__all__ = ["COMPONENT_KINDS", "DOT_KINDS", "DSP_MIN_PRODUCT", "DSP_PORTS", "PE_KINDS", "REQUANT_MULT_BITS",
           "PeConfig", "acc_width", "dsp_packing", "mul_dsps", "pack_shift", "product_width", "requant_shift",
           "require_lane_widths", "shift_range", "sp2_split", "tree_bits", "tree_levels"]


def shift_range(kind: str, wbits: int, split: int = 0) -> int:
    """``F``: the largest exponent field value; terms are ``2**(F - e)`` for ``e`` in 1..F (0: no shifts).

    ``split``: an SP2 code's ``m1`` (:func:`sp2_split`; 0: the default split).
    """
    pk = PE_KINDS.get(kind)
    return pk.shift_range(wbits, split) if pk is not None else 0


def product_width(kind: str, wbits: int, abits: int, signed_act: bool = False, split: int = 0) -> int:
    """Bits of one lane's signed product (weights signed, activations unsigned unless ``signed_act``).

    >>> product_width("fixed_lut", 4, 4), product_width("sp2", 4, 4), product_width("pot", 4, 4)
    (8, 8, 11)
    """
    # Signed results hold the negation of the most negative value too; the same width
    # serves signed and unsigned activations (an unsigned ``abits`` operand is ``abits + 1``
    # bits signed, a signed one needs the extra bit for -(-2**(abits-1))).
    del signed_act
    pk = PE_KINDS.get(kind)
    if pk is None or pk.product_width is None:
        raise HardwareError(f"product_width: {kind!r} is not a dot-unit kind ({', '.join(DOT_KINDS)})")
    return pk.product_width(wbits, abits, split)


def pack_shift(wbits: int, abits: int, acc_len: int, signed_act: bool = False) -> int:
    """``S``: the lower field of a packed DSP word holds a whole accumulated row of products."""
    return acc_width(product_width("fixed_dsp2", wbits, abits, signed_act), acc_len)


def dsp_packing(dsp_type: str, wbits: int, abits: int, acc_len: int, signed_act: bool = False,
                narrow: bool = False) -> int:
    """Products one DSP computes per cycle for a ``wbits`` x ``abits`` fixed-point row of ``acc_len``.

    Two (weights of two rows times one shared activation, ``a * (w_hi * 2**S + w_lo)``, as in
    Xilinx WP486) when the packed operand fits the DSP's wide port and the activation its narrow
    port; else one. The packed operand takes ``S + wbits + 1`` bits: ``w_hi * 2**S + w_lo`` falls
    below ``-2**(S + wbits - 1)`` when ``w_hi`` is the most negative code and ``w_lo < 0`` — unless the
    weights are ``narrow`` (symmetric, never the most negative code): then ``S + wbits``. Intel
    variable-precision blocks hold two 18x19 multipliers natively: two when both operands fit 18x19.

    >>> dsp_packing("DSP48E1", 4, 4, 4608), dsp_packing("DSP48E1", 4, 4, 4608, narrow=True)
    (1, 2)
    >>> dsp_packing("DSP48E1", 4, 4, 1024), dsp_packing("DSP48E1", 8, 8, 64)
    (2, 1)
    """
    a_op = abits + (0 if signed_act else 1)
    if dsp_type in DSP_PORTS:
        wide, narrow_port = DSP_PORTS[dsp_type]
        s = pack_shift(wbits, abits, acc_len, signed_act)
        operand = s + wbits + (0 if narrow else 1)
        return 2 if (operand <= wide and a_op <= narrow_port and 2 * s <= 48) else 1
    if dsp_type == "S10-VPDSP":
        return 2 if max(wbits, a_op) <= 19 and min(wbits, a_op) <= 18 else 1
    raise HardwareError(f"unknown DSP type {dsp_type!r}; known: {', '.join([*DSP_PORTS, 'S10-VPDSP'])}")


def require_lane_widths(cfg: PeConfig, name: str) -> None:
    """Refuse a PE whose kind takes one weight or activation width (XNOR: 1 x 1, ternary: 2-bit weights)
    at another, naming the module ``name`` (the generator and the reference circuits both ask)."""
    pk = PE_KINDS[cfg.kind]
    if pk.weight_bits is not None and cfg.wbits != pk.weight_bits:
        raise HardwareError(f"{name}: {cfg.kind} weights take {pk.weight_bits} bit(s), got {cfg.wbits}")
    if pk.act_bits is not None and cfg.abits != pk.act_bits:
        raise HardwareError(f"{name}: {cfg.kind} activations take {pk.act_bits} bit(s), got {cfg.abits}")


@dataclass(frozen=True)
class PeConfig:
    """One PE (see the module docstring for the kinds and what each field means per kind): ``kind``, ``wbits``,
    ``abits`` and ``simd`` by position or name, the rest by name only.

    ``acc_len`` (products per output) sets the accumulator width of dot units;
    ``accw`` overrides it (and is the input width of ``requant`` / ``thresh``).
    """

    kind: str
    wbits: int = 0
    abits: int = 0
    simd: int = 1
    _: KW_ONLY
    acc_len: int = 512
    accw: int = 0
    out_bits: int = 0
    signed_act: bool = False
    sp2_m1: int = 0  # sp2: the wider exponent field's bits (0: sp2_split's default)

    def __post_init__(self) -> None:
        if self.kind not in PE_KINDS:
            raise HardwareError(f"PE kind {self.kind!r} is unknown; known: {', '.join(PE_KINDS)}")
        if self.simd < 1:
            raise HardwareError(f"PE {self.kind}: simd must be >= 1, got {self.simd}")
        if self.sp2_m1:
            if not PE_KINDS[self.kind].splits:
                raise HardwareError(f"PE {self.kind}: only SP2 lanes take an exponent split (sp2_m1)")
            sp2_split(self.wbits, self.sp2_m1)  # raises on an impossible split

    @property
    def product_bits(self) -> int:
        return product_width(self.kind, self.wbits, self.abits, self.signed_act, self.sp2_m1)

    @property
    def acc_bits(self) -> int:
        """Accumulator width (dot units, ``acc``) or input width (``requant``, ``thresh``)."""
        if self.accw:
            return self.accw
        return acc_width(self.product_bits, self.acc_len) + PE_KINDS[self.kind].acc_extra

    @property
    def name(self) -> str:
        """A short unique module name, e.g. ``sp2_w4a4_s8_acc19``."""
        return PE_KINDS[self.kind].name_template.format(
            c=self, sa="s" if self.signed_act else "", mem="bram" if self.abits else "lutram",
            split=f"m{self.sp2_m1}" if self.sp2_m1 else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.sp2_m1:  # the default split: the records and headers of before the field
            del d["sp2_m1"]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PeConfig:
        return PeConfig(**d)
