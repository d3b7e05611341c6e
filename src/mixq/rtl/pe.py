"""Verilog generators for the processing elements described by :class:`mixq.hw.pe.PeConfig`.

Every generator returns one self-contained Verilog-2005 module (plain text, no
generate loops, so it reads like the circuit). Conventions shared by all dot units:

* ``act``  — ``simd`` activations of ``abits`` bits, lane ``i`` at ``act[i*abits +: abits]``
  (unsigned unless the PE has ``signed_act``);
* ``wgt``  — ``simd`` weight codes of ``wbits`` bits (two rows interleaved for ``fixed_dsp2``:
  lane ``i`` row 0 at ``wgt[2*i*wbits +: wbits]``, row 1 next to it);
* ``first`` — high with the first beat of each output; it travels down the pipeline
  beside the data, and ``acc_first`` is high on the cycle the accumulator restarts;
  the finished sum of an output is ``acc`` on the cycle before ``acc_first``;
* ``acc`` — signed accumulator(s) of ``PeConfig.acc_bits`` (``fixed_dsp2``: ``{row1, row0}``).

Weight codes: fixed point two's complement; SP2 ``{sign, e1[m1], e2[m2]}``, term
``k`` is ``2**(F-e_k)`` (zero for ``e_k == 0``) with ``F = 2**m1 - 1``; power of
two ``{sign, e[wbits-1]}`` with ``F = 2**(wbits-1) - 1``; ternary two's complement
in 2 bits; XNOR 1 bit (1 = +1), popcount accumulated (bipolar conversion downstream).
"""

from __future__ import annotations

from mixq.errors import HardwareError
from mixq.hw.pe import REQUANT_MULT_BITS, PeConfig, requant_shift, shift_range, sp2_split, tree_levels

# Synthesis with DSP inference off for PEs meant for LUTs (a 9-bit-or-wider LUT
# multiplier would otherwise be mapped to a DSP).
LUT_ONLY = frozenset({"fixed_lut", "sp2", "pot", "ternary", "xnor", "tree", "acc", "thresh", "ram"})


def decode_weight(kind: str, wbits: int, code: int) -> int:
    """The integer a lane multiplies by for weight ``code`` (the encoding of the module docstring).

    >>> [decode_weight("sp2", 4, c) for c in (0b0000, 0b0101, 0b1111)]
    [0, 6, -5]
    """
    code &= (1 << wbits) - 1
    if kind in ("fixed_lut", "fixed_dsp", "fixed_dsp2", "ternary"):
        v = code - (1 << wbits) if code >> (wbits - 1) else code
        return v if kind != "ternary" or v != -2 else 0
    if kind == "xnor":
        return code
    sign = -1 if code >> (wbits - 1) else 1
    f = shift_range(kind, wbits)
    if kind == "pot":
        e = code & ((1 << (wbits - 1)) - 1)
        return sign * (1 << (f - e) if e else 0)
    if kind == "sp2":
        m1, m2 = sp2_split(wbits)
        e1, e2 = (code >> m2) & ((1 << m1) - 1), code & ((1 << m2) - 1)
        return sign * ((1 << (f - e1) if e1 else 0) + (1 << (f - e2) if e2 else 0))
    raise HardwareError(f"decode_weight: {kind!r} is not a dot-unit kind")


def uses_nodsp(cfg: PeConfig) -> bool:
    """Whether the PE is synthesized with ``synth_xilinx -nodsp``."""
    return cfg.kind in LUT_ONLY


class _V:
    """A tiny line buffer for Verilog text."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _tree(v: _V, inputs: list[tuple[str, int]], prefix: str, signed: bool = True) -> tuple[str, int, int]:
    """Emit a registered binary adder tree; returns (output signal, width, levels)."""
    sg = "signed " if signed else ""
    level = 0
    cur = inputs
    while len(cur) > 1:
        nxt: list[tuple[str, int]] = []
        for j in range(0, len(cur) - 1, 2):
            (a, wa), (b, wb) = cur[j], cur[j + 1]
            w = max(wa, wb) + 1
            n = f"{prefix}{level}_{j // 2}"
            v(f"  reg {sg}[{w - 1}:0] {n};")
            v(f"  always @(posedge clk) {n} <= {a} + {b};")
            nxt.append((n, w))
        if len(cur) % 2:
            a, wa = cur[-1]
            n = f"{prefix}{level}_{len(cur) // 2}"
            v(f"  reg {sg}[{wa - 1}:0] {n};")
            v(f"  always @(posedge clk) {n} <= {a};")
            nxt.append((n, wa))
        cur = nxt
        level += 1
    return cur[0][0], cur[0][1], level


def _first_delay(v: _V, stages: int) -> str:
    """Delay ``first`` by ``stages`` cycles; returns the aligned signal."""
    if stages == 0:
        return "first"
    v(f"  reg [{stages - 1}:0] fd;")
    if stages == 1:
        v("  always @(posedge clk) fd <= first;")
    else:
        v(f"  always @(posedge clk) fd <= {{fd[{stages - 2}:0], first}};")
    return f"fd[{stages - 1}]"


def _act(cfg: PeConfig, i: int) -> str:
    """Lane ``i``'s activation as a signed operand."""
    return f"$signed(a{i})" if cfg.signed_act else f"$signed({{1'b0, a{i}}})"


def _lane_product(v: _V, cfg: PeConfig, i: int, pw: int) -> None:
    """Emit lane ``i``'s registered product ``p{i}`` (LUT-built kinds)."""
    w, k = cfg.wbits, cfg.kind
    if k == "xnor":
        v(f"  reg p{i};")
        v(f"  always @(posedge clk) p{i} <= ~(w{i} ^ a{i});")
        return
    v(f"  reg signed [{pw - 1}:0] p{i};")
    v(f"  wire signed [{pw - 1}:0] x{i} = {_act(cfg, i)};")
    if k == "fixed_lut":
        v(f"  always @(posedge clk) p{i} <= $signed(w{i}) * {_act(cfg, i)};")
    elif k == "ternary":
        v(f"  always @(posedge clk) p{i} <= (w{i} == 2'b01) ? x{i} : (w{i} == 2'b11) ? -x{i} : 0;")
    elif k == "pot":
        f = shift_range(k, w)
        v(f"  wire [{w - 2}:0] e{i} = w{i}[{w - 2}:0];")
        v(f"  wire signed [{pw - 1}:0] t{i} = (e{i} == 0) ? 0 : (x{i} <<< ({f} - e{i}));")
        v(f"  always @(posedge clk) p{i} <= w{i}[{w - 1}] ? -t{i} : t{i};")
    elif k == "sp2":
        m1, m2 = sp2_split(w)
        f = shift_range(k, w)
        v(f"  wire [{m1 - 1}:0] e1_{i} = w{i}[{w - 2}:{m2}];")
        v(f"  wire [{m2 - 1}:0] e2_{i} = w{i}[{m2 - 1}:0];")
        v(f"  wire signed [{pw - 1}:0] t1_{i} = (e1_{i} == 0) ? 0 : (x{i} <<< ({f} - e1_{i}));")
        v(f"  wire signed [{pw - 1}:0] t2_{i} = (e2_{i} == 0) ? 0 : (x{i} <<< ({f} - e2_{i}));")
        v(f"  wire signed [{pw - 1}:0] m{i} = t1_{i} + t2_{i};")
        v(f"  always @(posedge clk) p{i} <= w{i}[{w - 1}] ? -m{i} : m{i};")
    else:  # pragma: no cover - guarded by the caller
        raise HardwareError(f"no LUT lane for {k}")


def _ports(v: _V, name: str, cfg: PeConfig, rows: int, accw: int) -> None:
    s, a, w = cfg.simd, cfg.abits, cfg.wbits
    v(f"// {name}: generated by mixq.rtl.pe from {cfg.to_dict()}")
    v(f"module {name} (")
    v("  input clk,")
    v("  input first,")
    v(f"  input [{s * a - 1}:0] act,")
    v(f"  input [{rows * s * w - 1}:0] wgt,")
    v(f"  output reg signed [{rows * accw - 1}:0] acc,")
    v("  output reg acc_first")
    v(");")
    for i in range(s):
        v(f"  wire [{a - 1}:0] a{i} = act[{i * a} +: {a}];")


def _dot_lut(cfg: PeConfig, name: str) -> str:
    v = _V()
    accw, pw, w = cfg.acc_bits, cfg.product_bits, cfg.wbits
    _ports(v, name, cfg, 1, accw)
    for i in range(cfg.simd):
        v(f"  wire [{w - 1}:0] w{i} = wgt[{i * w} +: {w}];")
        _lane_product(v, cfg, i, pw)
    signed = cfg.kind != "xnor"
    root, rw, levels = _tree(v, [(f"p{i}", pw) for i in range(cfg.simd)], "s", signed)
    f = _first_delay(v, 1 + levels)
    ext = f"$signed({root})" if signed else f"$signed({{1'b0, {root}}})"
    v(f"  always @(posedge clk) begin acc <= {f} ? {ext} : acc + {ext}; acc_first <= {f}; end")
    v("endmodule")
    return v.text()


def _skew(v: _V, i: int, sig: str, width: int) -> str:
    """Delay ``sig`` by ``i`` cycles (systolic skew of lane ``i``); returns the delayed signal."""
    if i == 0:
        return sig
    v(f"  reg [{i * width - 1}:0] k{i};")
    if i == 1:
        v(f"  always @(posedge clk) k{i} <= {sig};")
    else:
        v(f"  always @(posedge clk) k{i} <= {{k{i}[{(i - 1) * width - 1}:0], {sig}}};")
    return f"k{i}[{i * width - 1}:{(i - 1) * width}]"


def _dot_dsp(cfg: PeConfig, name: str) -> str:
    """DSP lanes chained on the post-adders; ``fixed_dsp2`` packs two rows per DSP."""
    v = _V()
    accw, w, a = cfg.acc_bits, cfg.wbits, cfg.abits
    packed = cfg.kind == "fixed_dsp2"
    rows = 2 if packed else 1
    cw = rows * accw  # chain width: two accw fields when packed
    if packed and cw > 48:
        raise HardwareError(f"{name}: packed accumulator of {cw} bits exceeds the DSP's 48")
    _ports(v, name, cfg, rows, accw)
    for i in range(cfg.simd):
        v(f"  wire [{rows * w - 1}:0] w{i} = wgt[{i * rows * w} +: {rows * w}];")
        v(f"  wire [{rows * w + a - 1}:0] q{i} = {{w{i}, a{i}}};")
        d = _skew(v, i, f"q{i}", rows * w + a)
        v(f"  wire [{rows * w + a - 1}:0] qd{i} = {d};")
        v(f"  wire [{a - 1}:0] ad{i} = qd{i}[{a - 1}:0];")
        v(f"  wire [{rows * w - 1}:0] wd{i} = qd{i}[{rows * w + a - 1}:{a}];")
        act = f"$signed(ad{i})" if cfg.signed_act else f"$signed({{1'b0, ad{i}}})"
        if packed:
            v(f"  wire signed [{accw + w - 1}:0] wp{i} = "
              f"($signed(wd{i}[{2 * w - 1}:{w}]) <<< {accw}) + $signed(wd{i}[{w - 1}:0]);")
            prod = f"wp{i} * {act}"
        else:
            prod = f"$signed(wd{i}) * {act}"
        v(f"  reg signed [{cw - 1}:0] c{i};")
        chain = f" + c{i - 1}" if i else ""
        v(f"  always @(posedge clk) c{i} <= {prod}{chain};")
    last = f"c{cfg.simd - 1}"
    f = _first_delay(v, cfg.simd)
    if not packed:
        v(f"  always @(posedge clk) begin acc <= {f} ? {last} : acc + {last}; acc_first <= {f}; end")
    else:
        v(f"  reg signed [{cw - 1}:0] pa;")
        v("  reg pf;")
        v(f"  always @(posedge clk) begin pa <= {f} ? {last} : pa + {last}; pf <= {f}; end")
        v("  always @(posedge clk) begin")
        v(f"    acc[{accw - 1}:0] <= pa[{accw - 1}:0];")
        v(f"    acc[{cw - 1}:{accw}] <= pa[{cw - 1}:{accw}] + pa[{accw - 1}];")
        v("    acc_first <= pf;")
        v("  end")
    v("endmodule")
    return v.text()


def _tree_unit(cfg: PeConfig, name: str) -> str:
    v = _V()
    n, b = cfg.simd, cfg.abits
    v(f"// {name}: generated by mixq.rtl.pe from {cfg.to_dict()}")
    v(f"module {name} (input clk, input [{n * b - 1}:0] x, output [{b + len(tree_levels(n)) - 1}:0] y);")
    for i in range(n):
        v(f"  reg signed [{b - 1}:0] r{i};")
        v(f"  always @(posedge clk) r{i} <= x[{i * b} +: {b}];")
    root, rw, _ = _tree(v, [(f"r{i}", b) for i in range(n)], "s")
    v(f"  assign y = {root};")
    v("endmodule")
    return v.text()


def _acc_unit(cfg: PeConfig, name: str) -> str:
    v = _V()
    b, accw = cfg.abits, cfg.acc_bits
    v(f"// {name}: generated by mixq.rtl.pe from {cfg.to_dict()}")
    v(f"module {name} (input clk, input first, input signed [{b - 1}:0] x, "
      f"output reg signed [{accw - 1}:0] acc);")
    v(f"  reg signed [{b - 1}:0] r;")
    v("  reg f;")
    v("  always @(posedge clk) begin r <= x; f <= first; acc <= f ? r : acc + r; end")
    v("endmodule")
    return v.text()


def _requant_unit(cfg: PeConfig, name: str) -> str:
    """Dyadic requantization: ``q = clamp((acc * m + 2**(sh-1)) >> sh, 0, 2**out_bits - 1)``.

    The rounding constant rides on the DSP's post-adder, so the fabric only clamps.
    """
    v = _V()
    accw, ob, mb = cfg.acc_bits, cfg.out_bits, REQUANT_MULT_BITS
    pw = accw + mb + 1
    sh = requant_shift(accw, ob)
    v(f"// {name}: generated by mixq.rtl.pe from {cfg.to_dict()}")
    v(f"module {name} (input clk, input signed [{accw - 1}:0] acc, input [{mb - 1}:0] m, "
      f"output reg [{ob - 1}:0] q);")
    v(f"  reg signed [{accw - 1}:0] ar;")
    v(f"  reg [{mb - 1}:0] mr;")
    v(f"  reg signed [{pw - 1}:0] p;")
    rw = pw - sh
    v(f"  wire signed [{rw - 1}:0] r = p >>> {sh};")
    v(f"  wire neg = r[{rw - 1}];")
    v(f"  wire ovf = |r[{rw - 2}:{ob}];  // above the output range (when not negative)")
    v("  always @(posedge clk) begin")
    v(f"    ar <= acc; mr <= m; p <= ar * $signed({{1'b0, mr}}) + $signed({pw}'d{1 << (sh - 1)});")
    v(f"    q <= neg ? {ob}'d0 : ovf ? {ob}'d{2 ** ob - 1} : r[{ob - 1}:0];")
    v("  end")
    v("endmodule")
    return v.text()


def _thresh_unit(cfg: PeConfig, name: str) -> str:
    """FINN-style thresholding: ``q = #{k : acc >= th_k}`` over ``2**out_bits - 1`` thresholds."""
    v = _V()
    accw, ob = cfg.acc_bits, cfg.out_bits
    nt = 2 ** ob - 1
    v(f"// {name}: generated by mixq.rtl.pe from {cfg.to_dict()}")
    v(f"module {name} (input clk, input signed [{accw - 1}:0] acc, input [{nt * accw - 1}:0] th, "
      f"output reg [{ob - 1}:0] q);")
    v(f"  reg signed [{accw - 1}:0] ar;")
    v("  always @(posedge clk) ar <= acc;")
    for k in range(nt):
        v(f"  reg c{k};")
        v(f"  always @(posedge clk) c{k} <= ar >= $signed(th[{k * accw} +: {accw}]);")
    root, rw, _ = _tree(v, [(f"c{k}", 1) for k in range(nt)], "s", signed=False)
    v(f"  always @(posedge clk) q <= {root};")
    v("endmodule")
    return v.text()


def _ram_unit(cfg: PeConfig, name: str) -> str:
    """Weight memory: ``wbits`` wide, ``simd`` deep; block RAM when ``abits`` else LUTRAM."""
    v = _V()
    w, d = cfg.wbits, cfg.simd
    aw = max(1, (d - 1).bit_length())
    style = "block" if cfg.abits else "distributed"
    v(f"// {name}: generated by mixq.rtl.pe from {cfg.to_dict()}")
    v(f"module {name} (input clk, input we, input [{aw - 1}:0] wa, input [{aw - 1}:0] ra, "
      f"input [{w - 1}:0] wd, output reg [{w - 1}:0] q);")
    v(f'  (* ram_style = "{style}" *) reg [{w - 1}:0] mem [0:{d - 1}];')
    v("  always @(posedge clk) begin if (we) mem[wa] <= wd; q <= mem[ra]; end")
    v("endmodule")
    return v.text()


def generate(cfg: PeConfig, name: str | None = None) -> str:
    """Verilog source of the PE ``cfg`` as one module named ``name`` (default ``cfg.name``)."""
    name = name or cfg.name
    k = cfg.kind
    if k in ("fixed_lut", "sp2", "pot", "ternary", "xnor"):
        if k == "ternary" and cfg.wbits != 2:
            raise HardwareError(f"{name}: ternary weights take 2 bits, got {cfg.wbits}")
        if k == "xnor" and (cfg.wbits, cfg.abits) != (1, 1):
            raise HardwareError(f"{name}: XNOR needs 1-bit weights and activations")
        return _dot_lut(cfg, name)
    if k in ("fixed_dsp", "fixed_dsp2"):
        return _dot_dsp(cfg, name)
    return {"tree": _tree_unit, "acc": _acc_unit, "requant": _requant_unit,
            "thresh": _thresh_unit, "ram": _ram_unit}[k](cfg, name)
