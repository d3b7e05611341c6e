"""Verilog of a whole layer engine: input buffer, sequencer, PE cores, requantizers, weight ROMs.

Ports of the generated module ``top``::

    clk, rst
    in_we, in_addr, in_data   write one word (``simd`` activation codes) of the input vector
                              buffer: ``groups * fold`` words, group ``g`` chunk ``s`` at
                              ``g * fold + s`` (a depthwise layer's vector holds every channel)
    start, busy               ``start`` runs the loaded vector; ``busy`` stays high until the
                              last output has left the pipeline
    ready                     the engine takes ``start`` in this cycle: idle, or (two banks) on
                              the last beat of the vector it runs
    out_valid[NR], out_row[NR*RW], out_q[NR*QW]
                              NR requantizer outputs: layer row index and its output code

Input banks (``banks=2``, the whole-network accelerator's engines): the input-vector buffer
holds two vectors; writes go to the *write bank*, and a taken ``start`` runs the write bank
and swaps the banks, so the next vector is written while the engine computes this one, and
a ``start`` on the last beat of a vector (``ready`` high) runs the next one without a gap
(the pipeline after the sequencer takes vectors back to back: a core's requantizers finish a
pass within ``fold`` cycles, and the outputs of cores of different latency are delayed to the
slowest, so the outputs of two vectors never interleave). ``banks=1`` (default) is the
single buffer: ``start`` is taken when the engine is idle (``!running``).

Datapath: a shared sequencer walks ``tiles x fold`` beats; every dot unit
(:mod:`mixq.rtl.pe`) reads its weight word from its ROM (``$readmemh``) and the input
chunk from the buffer (depthwise: at its row's group); when a pass finishes, the unit
accumulators are captured into hold registers and ``R = ceil(rows_per_pass / fold)``
requantizers per core work through them (the hardware model's sharing of one
requantizer over ``fold`` rows). Requantization is the exact folded rule of
:mod:`mixq.rtl.layerdata`: ``q = clamp((acc * M' + C) >>> N, LO, HI)``, per-row ``M'``,
``C`` (and ``LO``/``HI`` when they differ by row) in a parameter ROM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mixq.errors import MixqError
from mixq.rtl.layerdata import LayerData
from mixq.rtl.layout import Core, Layout, encode_weight, pad_code, popcount_offsets
from mixq.rtl.memfile import pack, signed_width
from mixq.rtl.pe import generate as generate_pe


@dataclass
class LayerRtl:
    """Generated sources: the Verilog text and the memory files it reads (name -> (words, width))."""

    top: str
    verilog: str
    mems: dict[str, tuple[list[int], int]] = field(default_factory=dict)
    nr: int = 0  # requantizer outputs
    row_bits: int = 1
    q_bits: int = 2
    in_words: int = 1
    in_width: int = 1
    drain: int = 0
    load_port: tuple[int, int, int] | None = None  # (select, address, data) widths of the weight-load port
    lane_rows: list[list[int]] = field(default_factory=list)  # per requantizer output: its rows, in output order
    # per requantizer output, parallel to lane_rows: the (tile, step) of each row's output; outputs of one
    # (tile, step) leave every lane in the same cycle, and (tile, step) order is time order within a vector
    lane_events: list[list[tuple[int, int]]] = field(default_factory=list)


def _bits(n: int) -> int:
    return max(1, (max(n, 1) - 1).bit_length())


def _requant_units(c: Core, fold: int) -> tuple[int, int]:
    """(R, S): requantizers of a core and the steps each takes per pass."""
    no = c.units * c.outs
    r = math.ceil(no / fold)
    return r, math.ceil(no / r)


WEIGHT_STYLES = ("auto", "rom", "lutram", "block")


def _weight_codes(d: LayerData, c: Core, length: int) -> np.ndarray:
    """PE codes of the core's rows, zero-padded to ``length`` (rows + 1, length); other rows and the last are 0s."""
    out = np.full((d.rows + 1, length), pad_code(c.kind, c.wbits), dtype=np.int64)
    mine = np.unique(c.slots[c.slots >= 0])
    w = d.weight.reshape(d.rows, -1)[mine]
    vals, inv = np.unique(w, return_inverse=True)
    enc = np.array([encode_weight(c.kind, c.wbits, int(v), d.name) for v in vals], dtype=np.int64)
    out[mine, : w.shape[1]] = enc[inv.reshape(w.shape)]
    return out


def _weight_words(codes: np.ndarray, c: Core, u: int, tiles: int, fold: int, simd: int) -> list[int]:
    """Memory words of unit ``u``: per tile and beat, lane ``i`` row ``o`` at field ``i * outs + o``."""
    rows = np.full((tiles, c.outs), -1, dtype=np.int64)
    rows[: c.tiles] = c.slots[:, u * c.outs:(u + 1) * c.outs]
    f = codes[rows]  # (tiles, outs, fold * simd); row -1 is the zero row
    f = f.reshape(tiles, c.outs, fold, simd).transpose(0, 2, 3, 1).reshape(tiles * fold, simd * c.outs)
    bits = (f[:, :, None] >> np.arange(c.wbits)) & 1  # (words, fields, wbits), LSB first
    packed = np.packbits(bits.reshape(len(f), -1).astype(np.uint8), axis=1, bitorder="little")
    return [int.from_bytes(b.tobytes(), "little") for b in packed]


def output_latency(lay: Layout, banks: int = 2) -> int:
    """Cycles from a taken ``start`` to the last valid output of that vector: the beats up to a core's last pass,
    the sequencer's and the PE's registers (with ``banks=2`` every core's outputs leave at the slowest core's
    latency), the requantizer steps up to the last real row of that pass, and the requantizer's pipeline."""
    fold = lay.fold
    max_lat = max(c.latency for c in lay.cores)
    last = 0
    for c in lay.cores:
        r_n, _ = _requant_units(c, fold)
        used = np.flatnonzero(c.slots[c.tiles - 1] >= 0)
        steps = int(used.max()) // r_n + 1 if used.size else 0
        lat = max_lat if banks == 2 else c.latency
        last = max(last, c.tiles * fold + lat + steps + 4)
    return last


def generate_layer(lay: Layout, top: str, mem_dir: str = "", weights: str = "auto", banks: int = 1,
                   wpc: int = 1) -> LayerRtl:
    """Verilog of the layer engine ``top`` for ``lay``; ``mem_dir`` prefixes the ``$readmemh`` paths.

    ``weights``: ``rom`` (initialised read-only memories; yosys builds them from LUTs),
    ``lutram`` / ``block`` (RAMs with a weight-load port ``wl_*``, initialised too), or
    ``auto``: the memory the hardware model chose for the layer (block RAM or LUTRAM).
    ``banks``: 1 (one input vector) or 2 (double-buffered input, back-to-back vectors; see the module docstring).
    ``wpc``: input-vector words written per ``in_we`` (``in_data`` holds them, word ``i`` at ``in_addr + i``;
    those past the vector are dropped) — a depthwise layer's window sequencer writes one per unit.
    """
    if banks not in (1, 2):
        raise MixqError(f"layer {lay.data.name!r}: {banks} input banks (1 or 2)")
    if weights not in WEIGHT_STYLES:
        raise MixqError(f"layer {lay.data.name!r}: weight memory style {weights!r} is not one of "
                        f"{', '.join(WEIGHT_STYLES)}")
    d = lay.data
    simd, fold, ab = lay.simd, lay.fold, lay.abits
    tiles = lay.tiles
    g = d.groups if d.op == "conv" else 1
    out = LayerRtl(top, "")
    lines: list[str] = []
    v = lines.append
    pre = f"{mem_dir.rstrip('/')}/" if mem_dir else ""

    def rom(name: str, file: str, words: list[int], width: int, attr: str = "") -> None:
        """A memory of ``words`` (``width`` bits each), initialised from ``file``, which ``out`` carries."""
        out.mems[file] = (words, width)
        v(f"  {attr}reg [{width - 1}:0] {name} [0:{len(words) - 1}];")
        v(f'  initial $readmemh("{pre}{file}", {name});')

    lo_all, hi_all = [int(x) for x in d.lo], [int(x) for x in d.hi]
    qw = signed_width(lo_all + hi_all)
    uniform = len(set(lo_all)) == 1 and len(set(hi_all)) == 1
    mw = max(1, max(int(m) for m in d.mult).bit_length())
    # C per row; an XNOR core's popcount exceeds the dot product by its row's count of -1 weights, taken off here
    const = [int(x) for x in d.const]
    w2 = d.weight.reshape(d.rows, -1)
    for c in lay.cores:
        rows = np.unique(c.slots[c.slots >= 0])
        for r, k in zip(rows, popcount_offsets(c.kind, w2[rows]), strict=True):
            const[r] -= int(k) * int(d.mult[r])
    cw = signed_width(const)
    rw = _bits(d.rows)
    n_shift = d.shift
    ia = _bits(g * fold)
    depth = tiles * fold
    nr = sum(_requant_units(c, fold)[0] for c in lay.cores)
    drain = max(c.latency for c in lay.cores) + max(_requant_units(c, fold)[1] for c in lay.cores) + 8
    out.nr, out.row_bits, out.q_bits, out.in_words, out.in_width, out.drain = nr, rw, qw, g * fold, simd * ab, drain
    # weight memories as the hardware model costs them (yosys 0.23 maps no initialised read-only
    # memory to 7-series LUTRAM: a ROM becomes LUT logic, so LUTRAM needs the load port)
    wdet = lay.estimate.detail.get("weights")
    if weights == "auto":
        weights = "block" if wdet is not None and wdet.bram > 0 else "lutram"
    mem_attr = {"rom": "", "lutram": '(* ram_style = "distributed" *) ', "block": '(* ram_style = "block" *) '}[weights]
    n_mem = sum(c.units for c in lay.cores)
    wl_sel = _bits(n_mem)
    wl_w = max(simd * c.wbits * c.outs for c in lay.cores)
    mem_id = 0
    if weights != "rom":
        out.load_port = (wl_sel, _bits(depth) + 1, wl_w)
    pe_src = {}
    for c in lay.cores:
        pe_src[c.cfg.name] = generate_pe(c.cfg, f"{top}_{c.cfg.name}")
    v(f"// {top}: layer engine for {d.name!r} generated by mixq.rtl.layer")
    v(f"// rows {d.rows}, row length {d.row_length}, simd {simd}, fold {fold}, tiles {tiles}, groups {g}; cores: "
      + ", ".join(f"{c.kind} w{c.wbits} x{c.units}" for c in lay.cores))
    v(f"module {top} (")
    v("  input clk, input rst,")
    v(f"  input in_we, input [{ia - 1}:0] in_addr, input [{wpc * simd * ab - 1}:0] in_data,")
    if weights != "rom":
        v(f"  input wl_we, input [{wl_sel - 1}:0] wl_sel, input [{_bits(depth)}:0] wl_addr, "
          f"input [{wl_w - 1}:0] wl_data,")
    v("  input start, output busy, output ready,")
    v(f"  output [{nr - 1}:0] out_valid, output [{nr * rw - 1}:0] out_row,")
    v(f"  output [{nr * qw - 1}:0] out_q")
    v(");")
    nv = g * fold  # words of one vector
    tw, sw, aw, dw = _bits(tiles) + 1, _bits(fold) + 1, _bits(depth) + 1, _bits(drain) + 1
    v(f"  reg running; reg [{tw - 1}:0] t; reg [{sw - 1}:0] sf; reg [{aw - 1}:0] waddr; reg [{dw - 1}:0] drain;")
    v(f"  reg [{simd * ab - 1}:0] inbuf [0:{banks * nv - 1}];")
    lw_ = simd * ab
    if banks == 2:
        v("  reg wbank, rbank;  // the bank written / the bank the running vector reads")
    writes = []
    for i in range(wpc):
        at = f"in_addr + {i}" if i else "in_addr"
        dst = at if banks == 1 else f"wbank ? {nv} + {at} : {at}"
        guard = f"if ({at} < {nv}) " if i else ""
        writes.append(f"{guard}inbuf[{dst}] <= in_data[{(i + 1) * lw_ - 1}:{i * lw_}];")
    v("  always @(posedge clk) if (in_we) begin " + " ".join(writes) + " end")
    if banks == 1:
        v("  assign ready = !running;")
        rsel = ""
    else:
        v(f"  assign ready = !running || (sf == {fold - 1} && t == {tiles - 1});")
        v("  always @(posedge clk) begin")
        v("    if (rst) begin wbank <= 0; rbank <= 0; end")
        v("    else if (start && ready) begin rbank <= wbank; wbank <= !wbank; end")
        v("  end")
        rsel = f"(rbank ? {nv} : 0) + "
    v("  always @(posedge clk) begin")
    v("    if (rst) begin running <= 0; t <= 0; sf <= 0; waddr <= 0; drain <= 0; end")
    v(f"    else if (start && ready) begin running <= 1; t <= 0; sf <= 0; waddr <= 0; drain <= {drain}; end")
    v("    else if (running) begin")
    v("      waddr <= waddr + 1;")
    v(f"      if (sf == {fold - 1}) begin sf <= 0; t <= t + 1; if (t == {tiles - 1}) running <= 0; end")
    v("      else sf <= sf + 1;")
    v("    end else if (drain != 0) drain <= drain - 1;")
    v("  end")
    v("  assign busy = running | (drain != 0);")
    v(f"  reg b_first, b_last; reg [{tw - 1}:0] b_t;")
    v(f"  always @(posedge clk) begin b_first <= running && sf == 0; b_last <= running && sf == {fold - 1}; "
      "b_t <= t; end")
    if g == 1:
        v(f"  reg [{simd * ab - 1}:0] aq;")
        v(f"  always @(posedge clk) aq <= inbuf[{rsel}sf];")
    rpos = 0
    max_lat = max(c.latency for c in lay.cores)
    rows_per_group = d.rows // g if g > 1 else d.rows
    for ci, c in enumerate(lay.cores):
        no = c.units * c.outs
        accw = c.cfg.acc_bits
        ww = simd * c.wbits * c.outs
        pfx = f"c{ci}"
        codes = _weight_codes(d, c, fold * simd)
        for u in range(c.units):
            words = _weight_words(codes, c, u, tiles, fold, simd)
            rom(f"{pfx}_wm{u}", f"{top}_{pfx}_u{u}_w.mem", words, ww, mem_attr)
            v(f"  reg [{ww - 1}:0] {pfx}_wq{u};")
            if weights == "rom":
                v(f"  always @(posedge clk) {pfx}_wq{u} <= {pfx}_wm{u}[waddr];")
            else:
                v(f"  always @(posedge clk) begin if (wl_we && wl_sel == {mem_id}) {pfx}_wm{u}[wl_addr] <= "
                  f"wl_data[{ww - 1}:0]; {pfx}_wq{u} <= {pfx}_wm{u}[waddr]; end")
            mem_id += 1
            act = "aq"
            if g > 1:
                gb = []
                for t in range(tiles):
                    r = int(c.slots[t, u * c.outs]) if t < c.tiles else -1
                    gb.append((r // rows_per_group) * fold if r >= 0 else 0)
                rom(f"{pfx}_gb{u}", f"{top}_{pfx}_u{u}_g.mem", gb, ia)
                v(f"  reg [{simd * ab - 1}:0] {pfx}_aq{u};")
                v(f"  always @(posedge clk) {pfx}_aq{u} <= inbuf[{rsel}{pfx}_gb{u}[t] + sf];")
                act = f"{pfx}_aq{u}"
            v(f"  wire signed [{c.outs * accw - 1}:0] {pfx}_acc{u};")
            v(f"  {top}_{c.cfg.name} {pfx}_pe{u} (.clk(clk), .first(b_first), .act({act}), .wgt({pfx}_wq{u}), "
              f".acc({pfx}_acc{u}), .acc_first());")
        lat = c.latency
        v(f"  reg [{lat - 1}:0] {pfx}_ld; reg [{lat * tw - 1}:0] {pfx}_td;")
        if lat == 1:
            v(f"  always @(posedge clk) begin {pfx}_ld <= b_last; {pfx}_td <= b_t; end")
        else:
            v(f"  always @(posedge clk) begin {pfx}_ld <= {{{pfx}_ld[{lat - 2}:0], b_last}}; "
              f"{pfx}_td <= {{{pfx}_td[{(lat - 1) * tw - 1}:0], b_t}}; end")
        r_n, s_n = _requant_units(c, fold)
        sbits = _bits(s_n) + 1
        for j in range(r_n * s_n):
            v(f"  reg signed [{accw - 1}:0] {pfx}_h{j};")
        v(f"  reg [{tw - 1}:0] {pfx}_ht; reg [{sbits - 1}:0] {pfx}_k; reg {pfx}_act;")
        v("  always @(posedge clk) begin")
        v(f"    if (rst) begin {pfx}_act <= 0; {pfx}_k <= 0; end")
        v(f"    else if ({pfx}_ld[{lat - 1}]) begin")
        for j in range(no):
            u, o = divmod(j, c.outs)
            v(f"      {pfx}_h{j} <= {pfx}_acc{u}[{(o + 1) * accw - 1}:{o * accw}];")
        v(f"      {pfx}_ht <= {pfx}_td[{lat * tw - 1}:{(lat - 1) * tw}]; {pfx}_k <= 0; {pfx}_act <= 1;")
        v(f"    end else if ({pfx}_act) begin {pfx}_k <= {pfx}_k + 1; if ({pfx}_k == {s_n - 1}) {pfx}_act <= 0; end")
        v("  end")
        pw = max(accw + mw + 1, cw) + 1
        rwid = max(pw - n_shift, qw) + 1
        pa = _bits(tiles * s_n) + 1
        for r in range(r_n):
            q = f"{pfx}_r{r}"
            fields_w = [mw + 1, cw, rw, 1] + ([] if uniform else [qw, qw])
            pwid = sum(fields_w)
            prm = []
            out.lane_rows.append([])
            out.lane_events.append([])
            for t in range(tiles):
                for s in range(s_n):
                    j = s * r_n + r
                    row = int(c.slots[t, j]) if t < c.tiles and j < no else -1
                    if row >= 0:
                        out.lane_rows[-1].append(row)
                        out.lane_events[-1].append((t, s))
                    if row < 0:
                        f = [0, 0, 0, 0] + ([] if uniform else [0, 0])
                    else:
                        f = [int(d.mult[row]), const[row], row, 1] + (
                            [] if uniform else [lo_all[row], hi_all[row]])
                    prm.append(pack(f, fields_w))
            rom(f"{q}_pm", f"{top}_{q}_p.mem", prm, pwid)
            v(f"  reg signed [{accw - 1}:0] {q}_x; reg [{pa - 1}:0] {q}_a; reg {q}_va;")
            v(f"  reg signed [{accw - 1}:0] {q}_m;")
            v("  always @(*) begin")
            v(f"    case ({pfx}_k)")
            for s in range(s_n):
                v(f"      {s}: {q}_m = {pfx}_h{s * r_n + r};")
            v(f"      default: {q}_m = 0;")
            v("    endcase")
            v("  end")
            v(f"  always @(posedge clk) begin {q}_x <= {q}_m; {q}_a <= {pfx}_ht * {s_n} + {pfx}_k; "
              f"{q}_va <= {pfx}_act; end")
            v(f"  wire [{pwid - 1}:0] {q}_w = {q}_pm[{q}_a];")
            off = 0
            v(f"  wire [{mw}:0] {q}_mul = {q}_w[{off + mw}:{off}];")
            off += mw + 1
            v(f"  wire signed [{cw - 1}:0] {q}_c = {q}_w[{off + cw - 1}:{off}];")
            off += cw
            v(f"  wire [{rw - 1}:0] {q}_row = {q}_w[{off + rw - 1}:{off}];")
            off += rw
            v(f"  wire {q}_ok = {q}_w[{off}];")
            off += 1
            if uniform:
                v(f"  wire signed [{qw - 1}:0] {q}_lo = {lo_all[0]}; wire signed [{qw - 1}:0] {q}_hi = {hi_all[0]};")
            else:
                v(f"  reg signed [{qw - 1}:0] {q}_lo, {q}_hi;")
                v(f"  always @(posedge clk) begin {q}_lo <= {q}_w[{off + qw - 1}:{off}]; "
                  f"{q}_hi <= {q}_w[{off + 2 * qw - 1}:{off + qw}]; end")
            v(f"  reg signed [{pw - 1}:0] {q}_p; reg [{rw - 1}:0] {q}_rb; reg {q}_vb;")
            v(f"  always @(posedge clk) begin {q}_p <= {q}_x * $signed({q}_mul) + {q}_c; "
              f"{q}_rb <= {q}_row; {q}_vb <= {q}_va & {q}_ok; end")
            v(f"  wire signed [{rwid - 1}:0] {q}_s = {q}_p >>> {n_shift};")
            v(f"  reg {q}_ov; reg [{rw - 1}:0] {q}_or; reg signed [{qw - 1}:0] {q}_oq;")
            v(f"  always @(posedge clk) begin {q}_ov <= {q}_vb; {q}_or <= {q}_rb;")
            v(f"    {q}_oq <= ({q}_s < {q}_lo) ? {q}_lo : ({q}_s > {q}_hi) ? {q}_hi : {q}_s[{qw - 1}:0];")
            v("  end")
            dl = max_lat - lat if banks == 2 else 0  # back to back: align the cores' outputs
            if dl:
                v(f"  reg [{dl - 1}:0] {q}_dv; reg [{dl * rw - 1}:0] {q}_dr; reg [{dl * qw - 1}:0] {q}_dq;")
                if dl == 1:
                    v(f"  always @(posedge clk) begin {q}_dv <= rst ? 1'b0 : {q}_ov; {q}_dr <= {q}_or; "
                      f"{q}_dq <= {q}_oq; end")
                else:
                    v(f"  always @(posedge clk) begin {q}_dv <= rst ? {dl}'d0 : {{{q}_dv[{dl - 2}:0], {q}_ov}}; "
                      f"{q}_dr <= {{{q}_dr[{(dl - 1) * rw - 1}:0], {q}_or}}; "
                      f"{q}_dq <= {{{q}_dq[{(dl - 1) * qw - 1}:0], {q}_oq}}; end")
                v(f"  assign out_valid[{rpos}] = {q}_dv[{dl - 1}]; "
                  f"assign out_row[{rpos * rw} +: {rw}] = {q}_dr[{dl * rw - 1}:{(dl - 1) * rw}];")
                v(f"  assign out_q[{rpos * qw} +: {qw}] = {q}_dq[{dl * qw - 1}:{(dl - 1) * qw}];")
            else:
                v(f"  assign out_valid[{rpos}] = {q}_ov; assign out_row[{rpos * rw} +: {rw}] = {q}_or;")
                v(f"  assign out_q[{rpos * qw} +: {qw}] = {q}_oq;")
            rpos += 1
    v("endmodule")
    out.verilog = "\n".join(lines) + "\n" + "".join(pe_src.values())
    return out
