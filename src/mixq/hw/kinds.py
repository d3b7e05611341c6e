"""The kinds of the hardware model as data: one record per PE kind, weight format and operator.

* :data:`PE_KINDS` — one :class:`PeKind` per processing-element kind: the dot units (how a lane
  forms its product, which resource it uses, its product width, cost features, DSP rule and
  weight-code decoding) and the components calibrated on their own (tree, accumulator,
  requantizer, thresholds, weight memory). Read by :mod:`mixq.hw.pe`, :mod:`mixq.hw.cost`,
  :mod:`mixq.hw.lower`, :mod:`mixq.hw.units`, :mod:`mixq.hw.overlay`, :mod:`mixq.hw.estimate`
  and the Verilog side (:mod:`mixq.rtl.pe` registers one emitter per kind, :mod:`mixq.rtl.layout`).
* :data:`WEIGHT_KINDS` — per weight-format kind, the lane its rows run on (:func:`mixq.hw.lower.pe_kind`).
* :data:`STREAM_OPS` / :data:`COMPUTE_OPS` — per LayerSpec operator kind, what the templates need
  to know about its data (the prices are in :data:`mixq.hw.streamops.STREAM_PRICES`).

The per-kind rules below are small functions of ``(wbits, abits)`` or of a
:class:`mixq.hw.pe.PeConfig`; each kind names its own, nothing branches on a kind's name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mixq.hw.bits import DSP_PORTS, REQUANT_MULT_BITS, mul_dsps, requant_shift, sp2_split, tree_bits
from mixq.hw.memory import block_count, lutram_mux_bits, lutram_prims
from mixq.hw.parts import BRAM18

if TYPE_CHECKING:
    from mixq.hw.pe import PeConfig

Features = dict[str, float]

# ---- shift ranges and product widths (weights signed; activations unsigned or signed: same width) ----


# ``m1`` is an SP2 code's exponent-field split (:func:`mixq.hw.bits.sp2_split`; 0: the default);
# the other kinds take it and ignore it.


def _no_shift(wbits: int, m1: int = 0) -> int:
    return 0


def _sp2_shift(wbits: int, m1: int = 0) -> int:
    """``F`` of an SP2 code: the largest value of its wider exponent field."""
    return 2 ** sp2_split(wbits, m1)[0] - 1


def _pot_shift(wbits: int, m1: int = 0) -> int:
    """``F`` of a power-of-two code ``{sign, e[wbits-1]}``."""
    return 2 ** (wbits - 1) - 1


def _width_multiply(wbits: int, abits: int, m1: int = 0) -> int:
    return wbits + abits


def _width_sp2(wbits: int, abits: int, m1: int = 0) -> int:
    return abits + _sp2_shift(wbits, m1) + 1  # magnitude up to a * 2**F, and the sign


def _width_pot(wbits: int, abits: int, m1: int = 0) -> int:
    return abits + _pot_shift(wbits)  # magnitude up to a * 2**(F-1), and the sign


def _width_select(wbits: int, abits: int, m1: int = 0) -> int:
    return abits + 1  # +-a


def _width_bit(wbits: int, abits: int, m1: int = 0) -> int:
    return 1


# ---- weight codes (the encoding of mixq.rtl.pe): code (masked to wbits) -> the integer a lane uses ----


def _twos(wbits: int, code: int, m1: int = 0) -> int:
    return code - (1 << wbits) if code >> (wbits - 1) else code


def _decode_ternary(wbits: int, code: int, m1: int = 0) -> int:
    v = _twos(wbits, code)
    return 0 if v == -2 else v


def _decode_bit(wbits: int, code: int, m1: int = 0) -> int:
    return code


def _decode_pot(wbits: int, code: int, m1: int = 0) -> int:
    sign = -1 if code >> (wbits - 1) else 1
    e = code & ((1 << (wbits - 1)) - 1)
    return sign * (1 << (_pot_shift(wbits) - e) if e else 0)


def _decode_sp2(wbits: int, code: int, m1: int = 0) -> int:
    sign = -1 if code >> (wbits - 1) else 1
    f = _sp2_shift(wbits, m1)
    m1, m2 = sp2_split(wbits, m1)
    e1, e2 = (code >> m2) & ((1 << m1) - 1), code & ((1 << m2) - 1)
    return sign * ((1 << (f - e1) if e1 else 0) + (1 << (f - e2) if e2 else 0))


# ---- cost features (LUTs and FFs are linear in them; see mixq.hw.cost) ----

# per-lane structures of a LUT dot unit, by feature name (``lw``: the width a lane registers: the
# product, or the magnitude (product width - 1) of a sign-in-sum lane)
LANE_FEATURES: dict[str, Callable[[PeConfig, int], float]] = {
    # an array multiplier: partial-product adders ~ (w-1)(a-1), growing a little faster
    "mul": lambda c, lw: float(c.simd * ((c.wbits - 1) * (c.abits - 1))),
    "mul2": lambda c, lw: float(c.simd * ((c.wbits - 1) * (c.abits - 1)) ** 1.5 / 4),
    "shift": lambda c, lw: float(c.simd * lw * (c.wbits - 1)),  # barrel shifters over the exponent bits
    "fanin": lambda c, lw: float(c.simd * c.abits * _terms(c)),  # their multiplexer inputs: a bits per term
    "mux": lambda c, lw: float(c.simd * _mux_luts(c, lw)),  # ... packed into LUT6s, bit by bit
    "log": lambda c, lw: float(c.simd * lw * math.ceil((c.wbits - 1) / 2)),  # ... as a log shifter (4:1 stages)
    "lane": lambda c, lw: float(c.simd * lw),  # the lane's registered product or magnitude (SP2: + its adder)
    "sign": lambda c, lw: float(c.simd),  # a sign-in-sum lane's sign: its register and carry-in delay
}


def _terms(cfg: PeConfig) -> int:
    """Nonzero shifted terms a shift-add lane selects among (SP2: both fields' together)."""
    if PE_KINDS[cfg.kind].splits:
        return sum(2**m - 1 for m in sp2_split(cfg.wbits, cfg.sp2_m1))
    return PE_KINDS[cfg.kind].shift_range(cfg.wbits, 0)


def _mux_luts(cfg: PeConfig, lw: int) -> int:
    """LUT6s of one power-of-two lane's shifter: output bit ``j`` reads the activation bits its
    shifts reach, the exponent bits and the sign (a tree of LUT6s past six inputs)."""
    return _mux_luts_of(cfg.kind, cfg.wbits, cfg.abits, lw)


@functools.lru_cache(maxsize=4096)
def _mux_luts_of(kind: str, wbits: int, abits: int, lw: int) -> int:
    f, sel = PE_KINDS[kind].shift_range(wbits, 0), wbits - 1
    total = 0
    for j in range(lw):
        n = sum(1 for k in range(f) if 0 <= j - k < abits) + sel + 1
        total += max(1, math.ceil((n - 1) / 5))
    return total


# skew a DSP lane's operands take for free: yosys puts up to this many registers into the DSP48E1's own
# input and pipeline registers (A1/A2, B1/B2, M), so a chain of up to this many + 1 lanes skews in no fabric
DSP_SKEW_FREE = 3
# a lane's operands delayed this many cycles or more sit in fabric shift registers (SRL16E: a LUT per bit)
DSP_SKEW_SRL = 5


def chain_group(cfg: PeConfig) -> int:
    """Lanes per registered stage of a DSP chain (:mod:`mixq.rtl.pe`): one while the skew is free or the
    products are too narrow for a DSP (under 9 bits yosys builds the chain in LUTs, where a pair is two
    fabric adders in series: 1,128 -> 1,470 LUT at 16 signed 4x4 lanes), else a pair linked by the
    unregistered cascade (a pair's lanes share one skew)."""
    if cfg.simd <= DSP_SKEW_FREE + 1 or PE_KINDS[cfg.kind].dsps(cfg, "DSP48E1") == 0:
        return 1
    return 2


def popcount_groups(cfg: PeConfig) -> list[int]:
    """Lanes of each popcount group of a one-bit-lane unit (``PeKind.popcount``; [] for other kinds)."""
    g = PE_KINDS[cfg.kind].popcount
    return [min(g, cfg.simd - j) for j in range(0, cfg.simd, g)] if g else []


def _lut_dot_features(cfg: PeConfig) -> Features:
    """Lanes, a LUT adder tree over them (or over popcount groups of them), the accumulator."""
    pk = PE_KINDS[cfg.kind]
    pw, accw = cfg.product_bits, cfg.acc_bits
    groups = popcount_groups(cfg)
    if groups:  # the groups' count registers, the tree over them
        cw = max(groups).bit_length()
        f = {"one": 1.0, "acc": float(accw), "group": float(sum(n.bit_length() for n in groups)),
             "tree": float(tree_bits(len(groups), cw))}
    else:
        f = {"one": 1.0, "acc": float(accw), "tree": float(tree_bits(cfg.simd, pw))}
    for name in pk.lane_features:
        f[name] = LANE_FEATURES[name](cfg, pw - 1 if pk.sign_in_sum else pw)
    return f


def _dsp_chain_features(cfg: PeConfig) -> Features:
    """DSP lanes chained on the post-adders (no LUT tree); ``rows`` rows packed per DSP."""
    s, accw, rows = cfg.simd, cfg.acc_bits, PE_KINDS[cfg.kind].rows
    if rows == 1 and _dsp_multiply(cfg, "DSP48E1") == 0:  # products under 9 bits: yosys builds it in LUTs
        pp = (cfg.wbits - 1) * (_act_operand(cfg) - 1)
        return {"one": 1.0, "soft_one": 1.0,
                "soft": float(s * pp), "soft2": float(s * pp**1.5 / 4),  # the array multipliers
                "soft_acc": float(s * accw),  # the chain's adders and registers
                "soft_mac1": float(accw if s == 1 else 0),  # one lane: the accumulator's restart multiplexer
                "skew": float(max(0, s - 5) * (cfg.wbits + cfg.abits))}
    # one lane: the accumulator is the DSP's P register (packed: its unpacking stays in fabric); two
    # lanes: yosys folds part of the fabric accumulator into the DSPs; more: a fabric accumulator
    f = {"one": 1.0, {1: "mac1", 2: "acc_pair"}.get(s, "acc"): float(rows * accw)}
    # lanes delayed past the DSP's own registers delay their operands in SRLs (pairs share a delay)
    g = chain_group(cfg)
    f["skew"] = float(sum(i // g >= DSP_SKEW_SRL for i in range(s)) * (rows * cfg.wbits + cfg.abits))
    f["lanes"] = float(s)  # the `first` delay line beside the chain
    if rows == 2:
        f["pack"] = float(s * cfg.wbits + accw)
        f["pack_reg"] = float(s * (accw + cfg.wbits) if g > 1 else 0)  # a paired chain registers the operand
    return f


def _tree_features(cfg: PeConfig) -> Features:
    return {"one": 1.0, "tree": float(tree_bits(cfg.simd, cfg.abits)), "lane": float(cfg.simd * cfg.abits)}


def _acc_features(cfg: PeConfig) -> Features:
    return {"one": 1.0, "acc": float(cfg.acc_bits)}


def _requant_features(cfg: PeConfig) -> Features:
    rw = cfg.acc_bits + REQUANT_MULT_BITS + 1 - requant_shift(cfg.acc_bits, cfg.out_bits)
    wide = cfg.acc_bits > DSP_PORTS["DSP48E1"][0]
    return {"one": 1.0,
            "out": float(cfg.out_bits),  # the clamp multiplexers
            "hi": float(max(rw - 1 - cfg.out_bits, 0)),  # the overflow OR over the bits above the output
            "wide": float(max(cfg.acc_bits - DSP_PORTS["DSP48E1"][0], 0)),  # a split multiply's fabric adder
            "wide_r": float(rw if wide else 0)}  # ... whose result is registered in fabric


def _thresh_features(cfg: PeConfig) -> Features:
    return {"one": 1.0, "cmp": float((2 ** cfg.out_bits - 1) * cfg.acc_bits), "out": float(2 ** cfg.out_bits)}


def _ram_features(cfg: PeConfig) -> Features:
    if cfg.abits:  # block RAM: no LUTs
        return {"one": 0.0}
    return {"prims": 4.0 * lutram_prims(cfg.wbits, cfg.simd), "mux": float(lutram_mux_bits(cfg.wbits, cfg.simd)),
            "q": float(cfg.wbits)}


# ---- DSP and block RAM rules ----


def _act_operand(cfg: PeConfig) -> int:
    return cfg.abits + (0 if cfg.signed_act else 1)


def _no_dsp(cfg: PeConfig, dsp_type: str) -> int:
    return 0


def _dsp_multiply(cfg: PeConfig, dsp_type: str) -> int:
    """One multiply per lane by the yosys rule on the product's own width (``wbits`` + the signed
    activation operand; under 9 bits yosys builds it in LUTs); Intel blocks hold two 18x19 products."""
    a_op = _act_operand(cfg)
    if dsp_type == "S10-VPDSP":
        return math.ceil(cfg.simd / 2) if max(cfg.wbits, a_op) <= 19 else cfg.simd
    return cfg.simd * mul_dsps(cfg.wbits, a_op, None, dsp_type)


def _dsp_packed(cfg: PeConfig, dsp_type: str) -> int:
    """``a * (w_hi * 2**S + w_lo)`` per lane: the packed operand is ``S + wbits`` wide."""
    return cfg.simd * mul_dsps(cfg.acc_bits + cfg.wbits, _act_operand(cfg), 2 * cfg.acc_bits, dsp_type)


def _dsp_requant(cfg: PeConfig, dsp_type: str) -> int:
    m = REQUANT_MULT_BITS + 1
    if dsp_type == "S10-VPDSP":
        return 1
    return mul_dsps(cfg.acc_bits, m, cfg.acc_bits + m, dsp_type)


def _no_bram(cfg: PeConfig) -> int:
    return 0


def _ram_bram(cfg: PeConfig) -> int:
    return block_count(cfg.wbits, cfg.simd, BRAM18) if cfg.abits else 0


# ---- the table ----

_DOT_NAME = "{c.kind}_w{c.wbits}{split}a{sa}{c.abits}_s{c.simd}_acc{c.acc_bits}"


@dataclass(frozen=True)
class PeKind:
    """One PE kind (see :mod:`mixq.hw.pe` for the circuits)."""

    name: str
    role: str  # "dot": lanes, a sum over them and an accumulator; "component": a part calibrated on its own
    core: str  # "dsp" or "lut": the resource its arithmetic maps to (the overlay's core; -nodsp synthesis)
    products: str  # dot units: "multiply", "shift_add", "select" or "xnor"; components: ""
    features: Callable[[PeConfig], Features]  # the structural cost features
    # the module name, formatted with c=PeConfig, sa="s" for signed activations, mem, split ("m3": sp2_m1 = 3)
    name_template: str
    # (wbits, abits, m1) -> bits of one lane's signed product (m1: the SP2 split, 0 = default)
    product_width: Callable[[int, int, int], int] | None = None
    shift_range: Callable[[int, int], int] = _no_shift  # (wbits, m1) -> F, the largest exponent (shift lanes)
    decode: Callable[[int, int, int], int] | None = None  # (wbits, code, m1) -> the integer a lane multiplies by
    dsps: Callable[[PeConfig, str], int] = _no_dsp  # (cfg, DSP type) -> DSP blocks
    brams: Callable[[PeConfig], int] = _no_bram  # 18-Kb block RAM halves
    lane_features: tuple[str, ...] = ()  # LUT dot units: the per-lane features of LANE_FEATURES
    rows: int = 1  # output rows one unit computes (2: two rows packed in each DSP)
    chain: bool = False  # lanes chained on the DSP post-adders (no LUT tree)
    signed_sum: bool = True  # products and sums are signed (XNOR's popcount is not)
    # lanes form a magnitude and the weight's sign rides on the adders' carry-ins ("": a signed product);
    # the ones' complement is formed before the lane register ("lane": it merges into a shifter's
    # multiplexers) or after it ("tree": into the first tree adder, where the magnitude is an adder's sum)
    sign_in_sum: str = ""
    splits: bool = False  # takes an exponent-field split (PeConfig.sp2_m1)
    acc_extra: int = 0  # accumulator bits beyond acc_width(product, length) (XNOR's bipolar conversion)
    weight_bits: int | None = None  # the one weight width the lane takes
    act_bits: int | None = None  # the one activation width the lane takes
    min_wbits: int = 1  # narrower weight codes run on ``fallback``, or are padded to this width
    fallback: str | None = None
    packed: str | None = None  # the kind packing two rows per DSP, where packing is legal
    single_row: str = ""  # the one-row kind of a packed kind ("" = itself)
    layer_engine: bool = False  # mixq.rtl.layer generates whole-layer engines of it
    table_memory: bool = False  # reads a table of 2**out_bits - 1 entries of acc_bits (thresholds)
    # one-bit lanes (XNOR): a registered flat popcount per group of this many lanes, the adder tree over
    # the groups (0: a tree over the lanes). 6: the cheapest group in yosys (benchmarks/results/hw_reference.md)
    popcount: int = 0

    @property
    def is_dot(self) -> bool:
        return self.role == "dot"


def _dot(name: str, core: str, products: str, width: Callable[[int, int, int], int],
         decode: Callable[[int, int, int], int],
         chain: bool = False, **kw: Any) -> PeKind:
    """A dot unit: DSP-chained lanes, or LUT lanes with an adder tree."""
    features = _dsp_chain_features if chain else _lut_dot_features
    return PeKind(name, "dot", core, products, features, _DOT_NAME, width, decode=decode, chain=chain, **kw)


PE_KINDS: dict[str, PeKind] = {k.name: k for k in (
    # signed wbits x abits multiply on LUTs
    _dot("fixed_lut", "lut", "multiply", _width_multiply, _twos, lane_features=("mul", "mul2", "lane"),
         layer_engine=True),
    # the same multiply, one per DSP; lanes chained on the DSP post-adders (systolic, no LUT tree)
    _dot("fixed_dsp", "dsp", "multiply", _width_multiply, _twos, chain=True, dsps=_dsp_multiply,
         packed="fixed_dsp2", layer_engine=True),
    # two rows' products of one activation packed in one DSP: a * (w_hi * 2**S + w_lo)
    _dot("fixed_dsp2", "dsp", "multiply", _width_multiply, _twos, chain=True, rows=2, dsps=_dsp_packed,
         single_row="fixed_dsp", layer_engine=True),
    # a * +-(2**-e1 + 2**-e2): two variable shifts and an add
    # a * (2**-e1 + 2**-e2): two variable shifts and an add; the sign folded into the adder tree
    _dot("sp2", "lut", "shift_add", _width_sp2, _decode_sp2, shift_range=_sp2_shift, sign_in_sum="tree",
         splits=True, lane_features=("shift", "fanin", "lane", "sign"), min_wbits=3, fallback="pot", layer_engine=True),
    # a * 2**-e: one variable shift; the sign folded into the adder tree
    _dot("pot", "lut", "shift_add", _width_pot, _decode_pot, shift_range=_pot_shift, sign_in_sum="lane",
         lane_features=("shift", "fanin", "mux", "log", "lane", "sign"), min_wbits=2, layer_engine=True),
    # a * {-1, 0, +1}: a select
    _dot("ternary", "lut", "select", _width_select, _decode_ternary, lane_features=("lane",), weight_bits=2,
         layer_engine=True),
    # binary weight x binary activation: XNOR, popcount
    _dot("xnor", "lut", "xnor", _width_bit, _decode_bit, lane_features=("lane",), signed_sum=False,
         acc_extra=1, weight_bits=1, act_bits=1, layer_engine=True, popcount=6),
    # components: simd inputs of abits (tree); an accumulator of accw fed abits (acc); dyadic
    # acc * M >> n, round, clamp to out_bits on a DSP (requant); 2**out_bits - 1 threshold comparators
    # (thresh, FINN style); a wbits wide x simd deep memory, block RAM when abits else LUTRAM (ram)
    PeKind("tree", "component", "lut", "", _tree_features, "tree_n{c.simd}_b{c.abits}"),
    PeKind("acc", "component", "lut", "", _acc_features, "acc_b{c.abits}_w{c.acc_bits}"),
    PeKind("requant", "component", "dsp", "", _requant_features, "requant_i{c.acc_bits}_o{c.out_bits}",
           dsps=_dsp_requant),
    PeKind("thresh", "component", "lut", "", _thresh_features, "thresh_i{c.acc_bits}_o{c.out_bits}",
           table_memory=True),
    PeKind("ram", "component", "lut", "", _ram_features, "ram_w{c.wbits}_d{c.simd}_{mem}", brams=_ram_bram),
)}

DOT_KINDS: tuple[str, ...] = tuple(k for k, v in PE_KINDS.items() if v.is_dot)
COMPONENT_KINDS: tuple[str, ...] = tuple(k for k, v in PE_KINDS.items() if not v.is_dot)
# the fixed-point multiply of each core (packing chosen by mixq.hw.pe.dsp_packing)
MULTIPLY_KINDS: dict[str, str] = {"lut": "fixed_lut", "dsp": "fixed_dsp"}
# ArchOptions.requant -> the requantizer's PE kind
REQUANT_KINDS: dict[str, str] = {"dyadic": "requant", "thresh": "thresh"}


@dataclass(frozen=True)
class WeightKind:
    """How rows of one weight-format kind are computed (:func:`mixq.hw.lower.pe_kind`)."""

    name: str  # the format's ``kind``
    lane: str | None  # its PE kind; None: a fixed-point multiply on the mapped core
    terms: int | None = None  # the lane needs formats of this many terms (``fmt.terms``), others multiply
    wide_act: str | None = None  # the lane when activations are wider than the lane's ``act_bits``
    wide_act_note: str = ""
    native: bool = False  # a multiply is the format's own arithmetic (no "modelled as" note)
    layer_engine: bool = False  # the layer engine stores the format's codes as PE codes

    def fits_lane(self, fmt: object) -> bool:
        return self.lane is not None and (self.terms is None or getattr(fmt, "terms", self.terms) == self.terms)


WEIGHT_KINDS: dict[str, WeightKind] = {w.name: w for w in (
    WeightKind("fixed", None, native=True, layer_engine=True),
    WeightKind("sp2", "sp2", terms=2, layer_engine=True),
    WeightKind("pot", "pot", layer_engine=True),
    WeightKind("focused", "pot"),  # a focused format's levels are single shifts too
    WeightKind("ternary", "ternary", layer_engine=True),
    WeightKind("binary", "xnor", wide_act="ternary",
               wide_act_note="binary weights with multi-bit activations modelled as ternary selects",
               layer_engine=True),
    WeightKind("minifloat", None),
    WeightKind("posit", None),
)}


@dataclass(frozen=True)
class StreamOp:
    """A stream operator between compute layers (priced by :data:`mixq.hw.streamops.STREAM_PRICES`)."""

    name: str
    elements: str = "in"  # the stream it handles per frame: "in"put, or "out"put (ops that write more)
    cycles_on_out: bool = False  # one output element per lane and cycle (reductions, products)
    skip_fifo: bool = False  # merges a skip path that waits in a FIFO
    ddr_passes: int = 0  # overlay: DDR traffic in output maps (an add reads two and writes one)
    folds: bool = False  # folded into the compute layer before it where graph.fold_bn folds it


# Residual add and skip concat (with the skip FIFO), pooling, lookup-table activations, the data-movement
# ops (nearest / bilinear upsample, zero insertion of a transposed conv, explicit padding, pixel shuffle,
# axis permutation),
# channel reductions (mean / max over the channels), elementwise products (attention gates), unfolded BN.
STREAM_OPS: dict[str, StreamOp] = {o.name: o for o in (
    StreamOp("add", "out", skip_fifo=True, ddr_passes=3),
    StreamOp("concat", "out", skip_fifo=True),
    StreamOp("maxpool"),
    StreamOp("avgpool"),
    StreamOp("gap"),
    StreamOp("act"),
    StreamOp("upsample", "out"),
    StreamOp("zero_insert", "out"),
    StreamOp("pad", "out"),
    StreamOp("pixel_shuffle", "out"),
    StreamOp("transpose"),
    StreamOp("reduce", cycles_on_out=True),
    StreamOp("mul", cycles_on_out=True),
    StreamOp("bn", cycles_on_out=True, folds=True),
)}


@dataclass(frozen=True)
class ComputeOp:
    """A compute layer kind."""

    name: str
    shared_act: bool = True  # all rows read the same activation (depthwise: each row its own channel)


COMPUTE_OPS: dict[str, ComputeOp] = {o.name: o for o in (
    ComputeOp("conv"), ComputeOp("dwconv", shared_act=False), ComputeOp("linear"))}


def shares_act(op_kind: str) -> bool:
    """Whether the rows of a layer of this kind read one shared activation (what DSP packing needs)."""
    op = COMPUTE_OPS.get(op_kind)
    return op.shared_act if op is not None else True
