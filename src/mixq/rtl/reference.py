"""Reference circuits: the plainest correct Verilog for every PE function, written apart from
the generator (:mod:`mixq.rtl.pe`) to check how good its circuits are (issue #19, item 1).

Each dot unit has the generator's ports and timing contract (``clk``, ``first``, ``act``,
``wgt``, ``acc``, ``acc_first``; the same weight codes; the finished sum of an output is ``acc``
on the cycle before ``acc_first``), so one simulation harness checks both. The circuits are
what a textbook would write, and leave the structure to yosys:

* the inputs (``act``, ``wgt``, ``first``) registered once, so the unit is timed like a real one;
* per lane a *combinational* product: ``p_i = $signed(w_i) * x_i`` (fixed point, on LUTs or DSPs
  as yosys decides), a select (ternary), ``~(w_i ^ a_i)`` (XNOR), or for SP2 / power of two the
  unsigned magnitude ``m_i`` from variable shifts, with the weight's sign applied in the sum
  (:data:`SIGN_STYLES`: ``s_i ? -m_i : m_i`` per lane, or ``m_i ^ {s_i}`` plus the popcount of
  the signs as one correction term);
* one flat sum ``sum = p_0 + p_1 + ...`` and one registered accumulator
  ``acc <= first ? sum : acc + sum`` (one multiply-accumulate when ``simd == 1``);
* ``fixed_dsp2``: the packed formula ``(w_hi * 2**S + w_lo) * x``, summed flat, and the high row
  corrected by the low row's sign combinationally at the output.

Components (same ports as the generator's): ``tree`` registers its inputs and one flat sum,
``acc`` a plain accumulator, ``requant`` multiply / round / clamp with comparisons, ``thresh``
comparisons and their count, ``ram`` an inferred memory. Module text is plain Verilog-2005.
"""

from __future__ import annotations

from collections.abc import Callable

from mixq.errors import HardwareError
from mixq.hw.bits import REQUANT_MULT_BITS, requant_shift, sp2_split, tree_levels
from mixq.hw.pe import PeConfig, require_lane_widths, shift_range

# How a sign-magnitude lane (sp2, pot) applies its weight's sign: a negation per lane
# ("negate"), or ones' complement per lane plus the popcount of the signs in the sum ("xor").
SIGN_STYLES = ("negate", "xor")
DEFAULT_SIGN = "xor"  # the cheaper of the two in yosys (benchmarks/results/hw_reference.md)


def _clog2(n: int) -> int:
    return max(0, (n - 1).bit_length())


def decode_sp2(code: int, split: tuple[int, int]) -> int:
    """The integer an SP2 code ``{sign, e1[m1], e2[m2]}`` stands for under ``split = (m1, m2)``:
    ``+-(2**(F-e1) + 2**(F-e2))``, a zero field contributing nothing, ``F = 2**m1 - 1``.

    >>> decode_sp2(0b0101, (2, 1)), decode_sp2(0b1111, (2, 1)), decode_sp2(0b01001, (3, 1))
    (6, -5, 72)
    """
    m1, m2 = split
    f = 2**m1 - 1
    e1, e2 = (code >> m2) & (2**m1 - 1), code & (2**m2 - 1)
    mag = (2 ** (f - e1) if e1 else 0) + (2 ** (f - e2) if e2 else 0)
    return -mag if (code >> (m1 + m2)) & 1 else mag


def _twos(w: int, code: int, cfg: PeConfig) -> int:
    return code - 2**w if code >> (w - 1) else code


def _pot(w: int, code: int, cfg: PeConfig) -> int:
    e, f = code & (2 ** (w - 1) - 1), 2 ** (w - 1) - 1
    mag = 2 ** (f - e) if e else 0
    return -mag if code >> (w - 1) else mag


# dot kind -> (wbits, code, cfg) -> the lane's integer weight (written apart from ``mixq.hw.kinds``)
_DECODE: dict[str, Callable[[int, int, PeConfig], int]] = {
    "fixed_lut": _twos, "fixed_dsp": _twos, "fixed_dsp2": _twos,
    "ternary": lambda w, code, cfg: {0: 0, 1: 1, 2: 0, 3: -1}[code],
    "xnor": lambda w, code, cfg: code,
    "sp2": lambda w, code, cfg: decode_sp2(code, sp2_split(w, cfg.sp2_m1)),
    "pot": _pot,
}


def decode_reference(cfg: PeConfig, code: int) -> int:
    """The integer lane weight of ``code`` for the dot kind of ``cfg`` (written apart from ``mixq.hw.kinds``)."""
    rule = _DECODE.get(cfg.kind)
    if rule is None:
        raise HardwareError(f"decode_reference: {cfg.kind!r} is not a dot-unit kind")
    return rule(cfg.wbits, code & (2**cfg.wbits - 1), cfg)


# shift kind -> (wbits, cfg) -> the (hi, lo) bit fields of its exponents: SP2 two, power of two one
_EXPONENT_FIELDS: dict[str, Callable[[int, PeConfig], list[tuple[int, int]]]] = {
    "sp2": lambda w, cfg: [(w - 2, sp2_split(w, cfg.sp2_m1)[1]), (sp2_split(w, cfg.sp2_m1)[1] - 1, 0)],
    "pot": lambda w, cfg: [(w - 2, 0)],
}


class _Text:
    """Lines of one module."""

    def __init__(self, cfg: PeConfig, name: str, ports: list[str]) -> None:
        self.lines = [f"// {name}: mixq.rtl.reference (plain reference circuit) of {cfg.to_dict()}",
                      f"module {name} (", ",\n".join(f"  {p}" for p in ports), ");"]

    def __call__(self, *lines: str) -> None:
        self.lines.extend("  " + line for line in lines)

    def end(self) -> str:
        return "\n".join([*self.lines, "endmodule"]) + "\n"


def _dot_ports(cfg: PeConfig, rows: int, acc_reg: bool = True) -> list[str]:
    s, a, w, accw = cfg.simd, cfg.abits, cfg.wbits, cfg.acc_bits
    return ["input clk", "input first", f"input [{s * a - 1}:0] act", f"input [{rows * s * w - 1}:0] wgt",
            f"output {'reg ' if acc_reg else ''}signed [{rows * accw - 1}:0] acc", "output reg acc_first"]


def _inputs(v: _Text, cfg: PeConfig, rows: int, operands: bool = True) -> None:
    """Register the inputs once; ``x{i}`` (``operands``): lane i's activation as a signed operand."""
    s, a, w = cfg.simd, cfg.abits, cfg.wbits
    v(f"reg [{s * a - 1}:0] ar; reg [{rows * s * w - 1}:0] wr; reg fr;",
      "always @(posedge clk) begin ar <= act; wr <= wgt; fr <= first; end")
    for i in range(s if operands else 0):
        a_i = f"ar[{i * a} +: {a}]"
        x = f"$signed({a_i})" if cfg.signed_act else f"$signed({{1'b0, {a_i}}})"
        v(f"wire signed [{a}:0] x{i} = {x};")


def _dot_open(cfg: PeConfig, name: str, rows: int = 1, operands: bool = True, acc_reg: bool = True) -> _Text:
    """A dot unit's module: its ports (:func:`_dot_ports`) and registered inputs (:func:`_inputs`)."""
    v = _Text(cfg, name, _dot_ports(cfg, rows, acc_reg))
    _inputs(v, cfg, rows, operands)
    return v


def _flat_sum(v: _Text, terms: list[str], width: int, signed: bool = True) -> None:
    v(f"wire {'signed ' if signed else ''}[{width - 1}:0] sum = {' + '.join(terms)};")


def _accumulated(v: _Text, terms: list[str], width: int, signed: bool = True) -> str:
    """End a dot unit: the flat ``sum`` of ``terms`` (:func:`_flat_sum`) into the accumulator, as the module's text."""
    _flat_sum(v, terms, width, signed)
    v("always @(posedge clk) begin acc <= fr ? sum : acc + sum; acc_first <= fr; end")
    return v.end()


def _dot_multiply(cfg: PeConfig, name: str, sign: str) -> str:
    """``fixed_lut`` / ``fixed_dsp``: ``p_i = w_i * x_i``, a flat sum, an accumulator (one MAC at simd 1)."""
    v = _dot_open(cfg, name)
    w, pw = cfg.wbits, cfg.product_bits
    for i in range(cfg.simd):
        v(f"wire signed [{w - 1}:0] w{i} = wr[{i * w} +: {w}];")
    if cfg.simd == 1:  # a multiply-accumulate
        v("always @(posedge clk) begin acc <= fr ? w0 * x0 : acc + w0 * x0; acc_first <= fr; end")
        return v.end()
    for i in range(cfg.simd):
        v(f"wire signed [{pw - 1}:0] p{i} = w{i} * x{i};")
    return _accumulated(v, [f"p{i}" for i in range(cfg.simd)], pw + _clog2(cfg.simd))


def _dot_select(cfg: PeConfig, name: str, sign: str) -> str:
    """``ternary``: ``p_i = w_i == +1 ? x_i : w_i == -1 ? -x_i : 0``."""
    v = _dot_open(cfg, name)
    pw = cfg.product_bits
    for i in range(cfg.simd):
        c = f"wr[{2 * i} +: 2]"
        v(f"wire signed [{pw - 1}:0] p{i} = ({c} == 2'b01) ? x{i} : ({c} == 2'b11) ? -x{i} : {pw}'sd0;")
    return _accumulated(v, [f"p{i}" for i in range(cfg.simd)], pw + _clog2(cfg.simd))


def _dot_xnor(cfg: PeConfig, name: str, sign: str) -> str:
    """``xnor``: ``sum = popcount(~(w ^ a))`` written as a flat sum of bits."""
    v = _Text(cfg, name, _dot_ports(cfg, 1))
    s = cfg.simd
    v(f"reg [{s - 1}:0] ar; reg [{s - 1}:0] wr; reg fr;",
      "always @(posedge clk) begin ar <= act; wr <= wgt; fr <= first; end")
    v(f"wire [{s - 1}:0] hit = ~(wr ^ ar);")
    return _accumulated(v, [f"hit[{i}]" for i in range(s)], _clog2(s + 1), signed=False)


def _dot_shift(cfg: PeConfig, name: str, sign: str) -> str:
    """``sp2`` / ``pot``: unsigned magnitudes from variable shifts; the sign applied in the sum."""
    if sign not in SIGN_STYLES:
        raise HardwareError(f"sign style {sign!r}: one of {', '.join(SIGN_STYLES)}")
    v = _dot_open(cfg, name, operands=False)
    w, pw = cfg.wbits, cfg.product_bits
    mw = pw - 1  # the magnitude's bits
    f = shift_range(cfg.kind, w, cfg.sp2_m1)
    fields = _EXPONENT_FIELDS[cfg.kind](w, cfg)
    xsg = "signed " if cfg.signed_act else ""
    for i in range(cfg.simd):
        code = f"wr[{i * w} +: {w}]"
        v(f"wire [{w - 1}:0] c{i} = {code};")
        v(f"wire {xsg}[{cfg.abits - 1}:0] a{i} = ar[{i * cfg.abits} +: {cfg.abits}];")
        terms = []
        for k, (hi, lo) in enumerate(fields):
            e = f"e{k}_{i}"
            v(f"wire [{hi - lo}:0] {e} = c{i}[{hi}:{lo}];")
            zero = f"{mw}'sd0" if cfg.signed_act else f"{mw}'d0"
            terms.append(f"(({e} == 0) ? {zero} : (a{i} <<< ({f} - {e})))")
        v(f"wire {xsg}[{mw - 1}:0] m{i} = {' + '.join(terms)};")
        ext = f"$signed(m{i})" if cfg.signed_act else f"$signed({{1'b0, m{i}}})"
        v(f"wire signed [{pw - 1}:0] t{i} = {ext};")
        if sign == "negate":
            v(f"wire signed [{pw - 1}:0] p{i} = c{i}[{w - 1}] ? -t{i} : t{i};")
        else:
            v(f"wire signed [{pw - 1}:0] p{i} = t{i} ^ {{{pw}{{c{i}[{w - 1}]}}}};")
    terms = [f"p{i}" for i in range(cfg.simd)]
    sw = pw + _clog2(cfg.simd)
    if sign == "xor":  # ones' complement per lane; the signs' popcount completes the negations
        nw = _clog2(cfg.simd + 1)
        v(f"wire [{nw - 1}:0] negs = {' + '.join(f'c{i}[{w - 1}]' for i in range(cfg.simd))};")
        terms.append("$signed({1'b0, negs})")
        sw += 1
    return _accumulated(v, terms, sw)


def _dot_packed(cfg: PeConfig, name: str, sign: str) -> str:
    """``fixed_dsp2``: ``(w_hi * 2**S + w_lo) * x`` per lane, a flat sum, one packed accumulator;
    ``acc = {hi + sign(lo), lo}`` (the low row's borrow returned to the high row)."""
    v = _dot_open(cfg, name, 2, acc_reg=False)
    w, accw = cfg.wbits, cfg.acc_bits
    cw = 2 * accw
    ww = min(accw + w + 1, cw)  # hi * 2**S + lo: one bit past hi's field (hi = -2**(w-1), lo < 0)
    for i in range(cfg.simd):
        lo, hi = f"wr[{2 * i * w} +: {w}]", f"wr[{(2 * i + 1) * w} +: {w}]"
        v(f"wire signed [{ww - 1}:0] wp{i} = ($signed({hi}) <<< {accw}) + $signed({lo});")
        v(f"wire signed [{cw - 1}:0] p{i} = wp{i} * x{i};")
    _flat_sum(v, [f"p{i}" for i in range(cfg.simd)], cw)
    v(f"reg signed [{cw - 1}:0] pa;", "always @(posedge clk) begin pa <= fr ? sum : pa + sum; acc_first <= fr; end")
    v(f"assign acc = {{pa[{cw - 1}:{accw}] + pa[{accw - 1}], pa[{accw - 1}:0]}};")
    return v.end()


def _tree(cfg: PeConfig, name: str, sign: str) -> str:
    n, b = cfg.simd, cfg.abits
    yw = b + len(tree_levels(n))
    v = _Text(cfg, name, ["input clk", f"input [{n * b - 1}:0] x", f"output reg signed [{yw - 1}:0] y"])
    v(f"reg [{n * b - 1}:0] xr;", "always @(posedge clk) xr <= x;")
    v(f"always @(posedge clk) y <= {' + '.join(f'$signed(xr[{i * b} +: {b}])' for i in range(n))};")
    return v.end()


def _acc(cfg: PeConfig, name: str, sign: str) -> str:
    b, accw = cfg.abits, cfg.acc_bits
    v = _Text(cfg, name, ["input clk", "input first", f"input signed [{b - 1}:0] x",
                          f"output reg signed [{accw - 1}:0] acc"])
    v(f"reg signed [{b - 1}:0] xr; reg fr;",
      "always @(posedge clk) begin xr <= x; fr <= first; acc <= fr ? xr : acc + xr; end")
    return v.end()


def _requant(cfg: PeConfig, name: str, sign: str) -> str:
    """``q = clamp((acc * m + 2**(sh-1)) >> sh, 0, 2**out_bits - 1)``: multiply, add, compare."""
    accw, ob, mb = cfg.acc_bits, cfg.out_bits, REQUANT_MULT_BITS
    pw, sh = accw + mb + 1, requant_shift(accw, ob)
    rw = pw - sh
    v = _Text(cfg, name, ["input clk", f"input signed [{accw - 1}:0] acc", f"input [{mb - 1}:0] m",
                          f"output reg [{ob - 1}:0] q"])
    v(f"reg signed [{accw - 1}:0] ar; reg [{mb - 1}:0] mr;", "always @(posedge clk) begin ar <= acc; mr <= m; end")
    v(f"wire signed [{pw - 1}:0] p = ar * $signed({{1'b0, mr}}) + $signed({pw}'d{2 ** (sh - 1)});")
    v(f"wire signed [{rw - 1}:0] r = p >>> {sh};")
    v(f"always @(posedge clk) q <= (r < 0) ? {ob}'d0 : (r > $signed({rw}'d{2**ob - 1})) ? {ob}'d{2**ob - 1} "
      f": r[{ob - 1}:0];")
    return v.end()


def _thresh(cfg: PeConfig, name: str, sign: str) -> str:
    """``q = (acc >= th_0) + (acc >= th_1) + ...``."""
    accw, ob = cfg.acc_bits, cfg.out_bits
    nt = 2**ob - 1
    v = _Text(cfg, name, ["input clk", f"input signed [{accw - 1}:0] acc", f"input [{nt * accw - 1}:0] th",
                          f"output reg [{ob - 1}:0] q"])
    v(f"reg signed [{accw - 1}:0] ar;", "always @(posedge clk) ar <= acc;")
    cmp = " + ".join(f"(ar >= $signed(th[{k * accw} +: {accw}]))" for k in range(nt))
    v(f"always @(posedge clk) q <= {cmp};")
    return v.end()


def _ram(cfg: PeConfig, name: str, sign: str) -> str:
    """An inferred memory, ``wbits`` x ``simd``; block RAM when ``abits`` else LUTRAM (the config's choice)."""
    w, d = cfg.wbits, cfg.simd
    aw = max(1, _clog2(d))
    v = _Text(cfg, name, ["input clk", "input we", f"input [{aw - 1}:0] wa", f"input [{aw - 1}:0] ra",
                          f"input [{w - 1}:0] wd", f"output reg [{w - 1}:0] q"])
    v(f'(* ram_style = "{"block" if cfg.abits else "distributed"}" *) reg [{w - 1}:0] mem [0:{d - 1}];')
    v("always @(posedge clk) begin if (we) mem[wa] <= wd; q <= mem[ra]; end")
    return v.end()


# PE kind -> its reference circuit
REFERENCES: dict[str, Callable[[PeConfig, str, str], str]] = {
    "fixed_lut": _dot_multiply, "fixed_dsp": _dot_multiply, "fixed_dsp2": _dot_packed,
    "sp2": _dot_shift, "pot": _dot_shift, "ternary": _dot_select, "xnor": _dot_xnor,
    "tree": _tree, "acc": _acc, "requant": _requant, "thresh": _thresh, "ram": _ram,
}


def reference(cfg: PeConfig, name: str | None = None, sign: str = DEFAULT_SIGN) -> str:
    """Verilog of the plain reference circuit of ``cfg``: one module ``name`` (default ``cfg.name``)
    computing what :func:`mixq.rtl.pe.generate` computes, with its ports (``sign``: sp2 / pot only)."""
    name = name or cfg.name
    require_lane_widths(cfg, name)
    return REFERENCES[cfg.kind](cfg, name, sign)


def sp2_config(abits: int, simd: int, split: tuple[int, int], acc_len: int = 64) -> PeConfig:
    """The SP2 dot unit of exponent fields ``split = (m1, m2)`` (``wbits = 1 + m1 + m2``)."""
    m1, m2 = split
    wbits = 1 + m1 + m2
    default = sp2_split(wbits)
    return PeConfig("sp2", wbits, abits, simd, acc_len=acc_len, sp2_m1=0 if (m1, m2) == default else m1)


def sp2_reference(wbits: int, abits: int, simd: int, split: tuple[int, int], sign: str = DEFAULT_SIGN,
                  acc_len: int = 64) -> str:
    """The reference SP2 unit of an explicit exponent split, e.g. ``(1, 1)``, ``(2, 1)``, ``(2, 2)``, ``(3, 1)``."""
    if 1 + sum(split) != wbits:
        raise HardwareError(f"SP2 split {split} does not fill a {wbits}-bit code (sign + m1 + m2)")
    return reference(sp2_config(abits, simd, split, acc_len), sign=sign)
