"""Verilog of a pointwise stage (:class:`mixq.rtl.netgraph.PointStage`): per-channel integer rules on whole
pixels read from one or two frame buffers — a residual add on a common grid, clamps, a requantizer — exactly
the integer engine's rules (:mod:`mixq.engine.runner`: ``add`` and ``requant`` round half up after one exact
integer sum, ``(sum + 2**(n-1)) >>> n``).

Ports of the generated module: ``can_read`` (every input buffer holds a frame), ``can_write`` (every output
buffer has a free bank), ``raddr`` (shared by the inputs; data two cycles later), ``rdata0`` / ``rdata1``,
the write port ``we`` / ``waddr`` / ``wdata`` and the frame handshake ``release_`` (inputs) / ``commit``
(outputs), both pulsed with the frame's last write. One pixel a cycle; all channels of a pixel at once in
64-bit signed arithmetic (the engine proves every sum fits 62 bits). A pointwise stage also reads and writes
rings of rows (:func:`mixq.rtl.frames.ring_rows`): ``row_in`` (every ring input has a row in), ``rel`` (a
row read: release it), ``rcol`` (a ring's read address, the column), ``row_out`` / ``reserve`` (the output
ring has a row free: reserve it); a row starts only when both hold, so the stage follows its producer a row
behind instead of a frame.
"""

from __future__ import annotations

from collections.abc import Callable

from mixq.rtl.frames import gather_rows
from mixq.rtl.netgraph import Buffer, GatherStage, PointOp, PointStage


def _c(v: int) -> str:
    return f"64'sd{v}" if v >= 0 else f"-64'sd{-v}"


def _bits(n: int) -> int:
    return max(1, (max(n, 1) - 1).bit_length())


def _read(v: Callable[[str], None], name: str, k: int, b: Buffer, ch: int) -> str:
    """Channel ``ch`` of input ``k`` (frame buffer ``b``) as a 64-bit signed wire ``name``."""
    field = f"rdata{k}[{ch * b.bits + b.bits - 1}:{ch * b.bits}]"
    v(f"  wire signed [63:0] {name} = " + (f"$signed({field});" if b.signed else f"$signed({{1'b0, {field}}});"))
    return name


def _channel(v: Callable[[str], None], c: int, ops: tuple[PointOp, ...], ins: list[Buffer], tag: str = "") -> str:
    """Wires computing channel ``c`` (names prefixed ``tag``); returns the name of its final value."""
    if ops and ops[0].op == "cat":  # channel c is channel j of input k
        k, j = ops[0].m[c]
        xs = [_read(v, f"{tag}x{k}_{c}", k, ins[k], j)]
        ops = ops[1:]
    elif ops and ops[0].op == "reduce":  # the one output channel: every input channel times its M, then R
        op = ops[0]
        xs = [_read(v, f"{tag}x0_{j}", 0, ins[0], j) for j in range(ins[0].shape[0])]
        prods = [f"{x} * {_c(m)}" for x, m in zip(xs, op.m[0], strict=True)]
        r = f"{tag}r_{c}"
        if op.fn == "sum":
            v(f"  wire signed [63:0] {r} = {' + '.join(prods)};")
        else:
            v(f"  wire signed [63:0] {r}0 = {prods[0]};")
            for j, t_ in enumerate(prods[1:], 1):
                v(f"  wire signed [63:0] {r}{j} = ({t_} > {r}{j - 1}) ? {t_} : {r}{j - 1};")
            v(f"  wire signed [63:0] {r} = {r}{len(prods) - 1};")
        n = op.n[0]
        v(f"  wire signed [63:0] {tag}u_{c} = ({r} + {_c((1 << n) >> 1)}) >>> {n};")
        xs = [f"{tag}u_{c}"]
        ops = ops[1:]
    else:  # a one-channel input (a spatial gate) broadcasts over the channels
        xs = [_read(v, f"{tag}x{k}_{c}", k, b, c if b.shape[0] > 1 else 0) for k, b in enumerate(ins)]
    cur = xs[0]
    for j, op in enumerate(ops):
        t = f"{tag}t{j}_{c}"
        if op.op == "lut":  # table[x - offset]: the stage's function (one per op) on the code
            v(f"  wire signed [63:0] {t} = {tag}lut{j}({cur} - {_c(op.n[0])});")
        elif op.op == "affine":
            n = op.n[c]
            v(f"  wire signed [63:0] {t} = (({cur} * {_c(op.m[0][c])} + {_c((1 << n) >> 1)}) >>> {n}) + "
              f"{_c(op.b[c])};")
        elif op.op == "mul":  # two maps, each rounded half up by its shift first (n); or a constant's sign (m)
            ys = [f"(({x} + {_c((1 << k) >> 1)}) >>> {k})" if k else x for x, k in zip(xs, op.n or (0,) * len(xs),
                                                                                       strict=True)]
            prod = " * ".join(ys) if not op.m else (cur if op.m[0][0] == 1 else f"-{cur}")
            v(f"  wire signed [63:0] {t} = {prod};")
        elif op.op == "add":
            n = op.n[c]
            terms = " + ".join(f"{x} * {_c(m[c])}" for x, m in zip(xs, op.m, strict=True))
            v(f"  wire signed [63:0] {t} = ({terms} + {_c((1 << n) >> 1)}) >>> {n};")
        elif op.op == "requant":
            n = op.n[c]
            assert op.lo is not None and op.hi is not None
            v(f"  wire signed [63:0] {t}r = ({cur} * {_c(op.m[0][c])} + {_c((1 << n) >> 1)}) >>> {n};")
            v(f"  wire signed [63:0] {t} = ({t}r < {_c(op.lo[c])}) ? {_c(op.lo[c])} : "
              f"({t}r > {_c(op.hi[c])}) ? {_c(op.hi[c])} : {t}r;")
        else:  # clamp
            lo = f"({cur} < {_c(op.lo[c])}) ? {_c(op.lo[c])} : " if op.lo is not None else ""
            v(f"  wire signed [63:0] {t}l = {lo}{cur};")
            hi = f"({t}l > {_c(op.hi[c])}) ? {_c(op.hi[c])} : " if op.hi is not None else ""
            v(f"  wire signed [63:0] {t} = {hi}{t}l;")
        cur = t
    return cur


def generate_pointwise(st: PointStage, ins: list[Buffer], top: str) -> tuple[str, dict[str, tuple[list[int], int]]]:
    """The module ``top`` of pointwise stage ``st`` reading the frame buffers ``ins`` (its sources' order), and
    its memory file (the class of every pixel, where pixels see different constants)."""
    c, h, w = st.shape
    n = h * w
    aw, xb = _bits(n), _bits(w)
    ob = st.out_bits
    lines: list[str] = []
    v = lines.append
    v(f"// {top}: pointwise stage {st.name!r} ({' -> '.join(o.op for o in st.ops)}) generated by mixq.rtl.pointwise")
    ports = ", ".join(f"input [{b.shape[0] * b.bits - 1}:0] rdata{k}" for k, b in enumerate(ins))
    v(f"module {top} (")
    v("  input clk, input rst, input can_read, input can_write, output reg release_, output reg commit,")
    v("  input row_in, input row_out, output reg rel, output reg reserve,")
    v(f"  output reg [{aw - 1}:0] raddr, output reg [{xb - 1}:0] rcol, {ports},")
    v(f"  output reg we, output reg [{aw - 1}:0] waddr, output reg [{c * ob - 1}:0] wdata")
    v(");")
    v("  // row-level flow where an input or the output is a ring of rows (mixq_rowbuf): a row starts once every")
    v("  // ring input has a row in (`row_in`) and the output ring can reserve one (`row_out`, `reserve`); with a")
    v("  // row's last read it is released (`rel`); a ring is read at the column (`rcol`), a frame at the pixel")
    v(f"  reg active, v1, v2, f1, f2; reg [{aw}:0] p; reg [{aw - 1}:0] a1, a2; reg [{xb - 1}:0] x;")
    v("  wire go = active && (x != 0 || (row_in && row_out));")
    v(f"  wire [{c * ob - 1}:0] res;")
    variants = st.variants or (st.ops,)
    mems: dict[str, tuple[list[int], int]] = {}
    cb = _bits(len(variants))
    v(f"  reg [{cb - 1}:0] c1, c2;")
    if len(variants) > 1:  # each pixel's class picks the constants it sees
        mems[f"{top}_c.mem"] = (list(st.pixel_class), cb)
        v(f"  reg [{cb - 1}:0] crom [0:{n - 1}]; initial $readmemh(\"{top}_c.mem\", crom);")
    for i, ops in enumerate(variants):  # a lookup table: a function of the code (a ROM in LUTs per channel)
        tag = f"k{i}_" if len(variants) > 1 else ""
        body = ops[1:] if ops and ops[0].op in ("cat", "reduce") else ops  # as _channel numbers them
        for j, op in enumerate(body):
            if op.op == "lut":
                v(f"  function signed [63:0] {tag}lut{j}; input signed [63:0] a; case (a)")
                v(" ".join(f"{a}: {tag}lut{j} = {_c(e)};" for a, e in enumerate(op.m[0])))
                v(f"    default: {tag}lut{j} = 0; endcase endfunction")
    for ch in range(c):
        outs = [_channel(v, ch, ops, ins, f"k{i}_" if len(variants) > 1 else "") for i, ops in enumerate(variants)]
        sel = outs[-1]
        for i in range(len(outs) - 2, -1, -1):
            sel = f"(c2 == {i}) ? {outs[i]} : {sel}"
        v(f"  wire signed [63:0] o{ch} = {sel};")
        v(f"  assign res[{ch * ob + ob - 1}:{ch * ob}] = o{ch}[{ob - 1}:0];")
    v("  always @(posedge clk) begin")
    v("    we <= 1'b0; release_ <= 1'b0; commit <= 1'b0; rel <= 1'b0; reserve <= 1'b0;")
    v("    if (rst) begin active <= 0; v1 <= 0; v2 <= 0; f1 <= 0; f2 <= 0; p <= 0; x <= 0; end")
    v("    else begin")
    v("      if (!active && !v1 && !v2 && !release_ && can_read && can_write) begin active <= 1; p <= 0; x <= 0; end")
    v("      v1 <= 1'b0; f1 <= 1'b0;")
    v(f"      if (go) begin raddr <= p[{aw - 1}:0]; rcol <= x; a1 <= p[{aw - 1}:0]; v1 <= 1'b1; f1 <= p == {n - 1};")
    v("        c1 <= " + ("crom[p];" if len(variants) > 1 else "0;"))
    v(f"        reserve <= x == 0; rel <= x == {w - 1}; x <= (x == {w - 1}) ? 0 : x + 1'b1;")
    v(f"        if (p == {n - 1}) active <= 1'b0; else p <= p + 1'b1; end")
    v("      v2 <= v1; a2 <= a1; f2 <= f1; c2 <= c1;")
    v("      if (v2) begin we <= 1'b1; waddr <= a2; wdata <= res; end")
    v("      if (v2 && f2) begin release_ <= 1'b1; commit <= 1'b1; end")
    v("    end")
    v("  end")
    v("endmodule")
    return "\n".join(lines) + "\n", mems


def generate_gather(st: GatherStage, buf: Buffer, top: str,
                    ring: bool = False) -> tuple[str, dict[str, tuple[list[int], int]]]:
    """The module ``top`` of gather stage ``st`` reading buffer ``buf`` (a frame buffer, or with ``ring`` a ring of
    rows: :func:`~mixq.rtl.frames.gather_rows`), and its memory files: per output pixel and tap ``{valid, input
    address}`` (on a ring, relative to the first row kept) and per output pixel its channel map (``$readmemh``);
    on a ring, per output row the rows it waits for and the rows it releases."""
    c, h, w = st.shape
    ic, ih, iw = st.in_shape
    n, taps, b = h * w, st.taps, st.out_bits
    aw, iaw = _bits(n), _bits(ih * iw)
    pb = _bits(len(st.maps))
    lines: list[str] = []
    v = lines.append
    keep, need, rel = gather_rows(st) if ring else ((0,) * h, (0,) * h, (0,) * h)
    base = [keep[p // w] * iw for p in range(n)]
    mems = {f"{top}_a.mem": ([(1 << iaw) | (a - base[p]) if a >= 0 else 0 for p, row in enumerate(st.addr)
                              for a in row], iaw + 1),
            f"{top}_m.mem": (list(st.phase), pb)}
    if ring:
        mems[f"{top}_r.mem"] = ([(nd << 8) | r for nd, r in zip(need, rel, strict=True)], 16)
    wb = max(2, max((abs(x) for row in st.weights for x in row), default=1).bit_length() + 1)
    if st.op == "sum":  # each tap's weight (two's complement)
        mems[f"{top}_w.mem"] = ([x & ((1 << wb) - 1) for row in st.weights for x in row], wb)
    v(f"// {top}: gather stage {st.name!r} ({st.op}, {taps} tap(s) per output pixel) generated by mixq.rtl.pointwise")
    v(f"module {top} (")
    v("  input clk, input rst, input can_read, input can_write, output reg release_, output reg commit,")
    v("  input [7:0] avail, output reg [7:0] rel, input row_out, output reg reserve,")
    v(f"  output reg [{iaw - 1}:0] raddr, input [{ic * buf.bits - 1}:0] rdata0,")
    v(f"  output reg we, output reg [{aw - 1}:0] waddr, output reg [{c * b - 1}:0] wdata")
    v(");")
    v(f"  reg [{iaw}:0] arom [0:{n * taps - 1}]; reg [{pb - 1}:0] mrom [0:{n - 1}];")
    v(f'  initial begin $readmemh("{top}_a.mem", arom); $readmemh("{top}_m.mem", mrom); end')
    v("  // row-level flow: an output row starts once the input ring holds the rows it reads (`avail`) and the output")
    v("  // ring can reserve a row (`row_out`, `reserve`); with its last read it releases the rows no later row reads")
    v("  reg [15:0] gx, gy;")
    if ring:
        v(f'  reg [15:0] rrom [0:{h - 1}]; initial $readmemh("{top}_r.mem", rrom);')
        v("  wire row_in = avail >= rrom[gy][15:8];")
    else:
        v("  wire row_in = 1'b1;")
    v("  wire go = active && ((gx != 0 || s != 0) || (row_in && row_out));")
    v(f"  reg active, v1, v2, l1, l2, f1, f2, k1, k2; reg [{aw}:0] p; reg [15:0] s; reg [{aw - 1}:0] a1, a2;")
    v(f"  reg [{pb - 1}:0] m1, m2; wire [{iaw}:0] ent = arom[p * {taps} + s];")
    v(f"  reg [{c * b - 1}:0] acc; wire [{c * b - 1}:0] nxt;")
    v("  reg seen;  // a valid tap of this output pixel has been taken (its first taps may fall on the padding)")
    v("  wire fresh = s2first || !seen;")
    if st.op == "sum":
        v(f"  reg signed [{wb - 1}:0] wrom [0:{n * taps - 1}]; initial $readmemh(\"{top}_w.mem\", wrom);")
        v(f"  reg signed [{wb - 1}:0] w1, w2;")
    sg = "$signed" if buf.signed else ""
    for ch in range(c):
        lo, hi = ch * b, ch * b + b - 1
        x = f"rdata0[{ch * buf.bits + buf.bits - 1}:{ch * buf.bits}]"
        if st.op == "max":
            a = f"acc[{hi}:{lo}]"
            v(f"  assign nxt[{hi}:{lo}] = !k2 ? {a} : (fresh ? {x} : (({sg}({x}) > {sg}({a})) ? {x} : {a}));")
        elif st.op == "sum":  # exact: acc + w * x in the output width (the engine's bound)
            xe = f"$signed({x})" if buf.signed else f"$signed({{1'b0, {x}}})"
            if st.shift:  # the engine's rounding of a pool of a wide product: half up by `shift` bits first
                v(f"  wire signed [63:0] xr{ch} = ({xe} + {_c(1 << (st.shift - 1))}) >>> {st.shift};")
                xe = f"xr{ch}"
            v(f"  wire signed [{b - 1}:0] base{ch} = s2first ? {b}'sd0 : $signed(acc[{hi}:{lo}]);")
            v(f"  assign nxt[{hi}:{lo}] = k2 ? base{ch} + w2 * {xe} : base{ch};")
        else:
            cases = " ".join(f"{i}: sel{ch} = " + (f"rdata0[{m[ch] * buf.bits + buf.bits - 1}:{m[ch] * buf.bits}];"
                                                  if m[ch] >= 0 else "0;") for i, m in enumerate(st.maps))
            v(f"  reg [{buf.bits - 1}:0] sel{ch}; always @(*) case (m2) {cases} default: sel{ch} = 0; endcase")
            ext = f"{{{{{b - buf.bits}{{sel{ch}[{buf.bits - 1}]}}}}, sel{ch}}}" if b > buf.bits and buf.signed else (
                f"{{{b - buf.bits}'d0, sel{ch}}}" if b > buf.bits else f"sel{ch}")
            v(f"  assign nxt[{hi}:{lo}] = k2 ? {ext} : {b}'d0;")
    v("  reg s2first; reg s1first;")
    v("  always @(posedge clk) begin")
    v("    we <= 1'b0; release_ <= 1'b0; commit <= 1'b0; rel <= 8'd0; reserve <= 1'b0;")
    v("    if (rst) begin")
    v("      active <= 0; v1 <= 0; v2 <= 0; f1 <= 0; f2 <= 0; p <= 0; s <= 0; seen <= 0; gx <= 0; gy <= 0;")
    v("    end else begin")
    v("      if (!active && !v1 && !v2 && !release_ && can_read && can_write) begin")
    v("        active <= 1; p <= 0; s <= 0; gx <= 0; gy <= 0; end")
    v("      v1 <= 1'b0;")
    wr = f" w1 <= wrom[p * {taps} + s];" if st.op == "sum" else ""
    v(f"      if (go) begin raddr <= ent[{iaw - 1}:0]; k1 <= ent[{iaw}]; a1 <= p[{aw - 1}:0]; m1 <= mrom[p];{wr}")
    v(f"        v1 <= 1'b1; s1first <= s == 0; l1 <= s == {taps - 1}; f1 <= p == {n - 1} && s == {taps - 1};")
    v("        reserve <= gx == 0 && s == 0;")
    v(f"        if (s == {taps - 1}) begin")
    v(f"          s <= 0; if (p == {n - 1}) active <= 1'b0; else p <= p + 1'b1;")
    release = " rel <= rrom[gy][7:0];" if ring else ""
    v(f"          if (gx == {w - 1}) begin gx <= 0; gy <= gy + 1'b1;{release} end else gx <= gx + 1'b1;")
    v("        end else s <= s + 1'b1; end")
    v("      v2 <= v1; k2 <= k1; a2 <= a1; m2 <= m1; l2 <= l1; f2 <= f1 & v1; s2first <= s1first;"
      + (" w2 <= w1;" if st.op == "sum" else ""))
    v("      if (v2) begin acc <= nxt; seen <= s2first ? k2 : (seen | k2);")
    v("        if (l2) begin we <= 1'b1; waddr <= a2; wdata <= nxt; end end")
    v("      if (v2 && f2) begin release_ <= 1'b1; commit <= 1'b1; end")
    v("    end")
    v("  end")
    v("endmodule")
    return "\n".join(lines) + "\n", mems
