"""The whole streaming accelerator of an integer model in Verilog: layer engines + glue behind AXI4-Stream.

:func:`~mixq.rtl.netgraph.lower_graph` groups an :class:`~mixq.engine.model.IntModel` into
stages and frame buffers: a layer stage per conv / linear node (dense or depthwise; with the
clamps, max-pool and requantizer after it, or writing its accumulators where an add, two
readers or the network output take them) and a pointwise stage per residual add / requant /
clamp between stages (:mod:`mixq.rtl.pointwise`). Each layer stage's engine is
:func:`mixq.rtl.layer.generate_layer`'s, reused as it is (no second MAC datapath), laid out at
a folding ``(pe, simd)``; :func:`generate_network` writes the top ``<name>_top``. A chain
``quantize -> (conv|linear -> clamp* -> maxpool? -> flatten? -> requant)* -> conv|linear``
(CNV's shape) is one line of layer stages (:func:`~mixq.rtl.netgraph.lower_network`).

Architecture: a **pipeline of per-stage buffers**::

    s_axis -> [ring0] -> window0 -> engine0 -> collect0 (+max-pool) -> [ring1] -> window1 -> ...
           ... -> engineN -> collectN -> [fbufN+1] -> m_axis

A buffer that a layer stage's window reads, written in raster order by one writer (the input
stream, or a layer stage writing no other buffer), is a **ring of** ``kh + stride + 1`` **rows**
(``mixq_rowbuf``, :func:`~mixq.rtl.frames.ring_rows`; the line buffer the streaming
estimator prices): the window starts an output row once the input rows it needs are in and,
where the row begins a row of its own output ring, once it has reserved that row; with the
row's last read it releases the input rows no later window needs (``mixq_rowgate``). So
layers overlap within a frame, a frame's latency is a few rows per layer, and the memory is
rows, not frames. Pointwise and gather stages read and write such rings too, a row at a time: a
pointwise stage of one input (a lookup-table activation, a requantizer between two layers) on three
rows; a gather (zero insertion, pad, max-pool, upsampling) on the rows its output rows read, from a
table per output row of the rows it waits for and releases; an add or a concat on its main-path
input where its other input is a frame committed first (the skip). Every other buffer (a skip, a
value two stages read, the whole-map window of a linear layer after a flatten, the output) holds
whole frames in ``K`` banks: its writer starts a frame when a bank is free and its reader when one
is full. ``K`` is two along one path and more where a frame waits longer (a U-Net's skip, written at
the encoder and read after every deeper level): :func:`mixq.rtl.frames.frame_banks`, so that no stage
waits for a bank in steady state.
A layer's *window sequencer* reads the ``kh x kw`` window of each output pixel from its input buffer
(one pixel word — all channels — per read; zeros on the padding) into the engine's
input-vector buffer and starts the engine (the engine's input buffer has two banks, so the
next window is written while the engine computes and the engine runs vectors back to back).
Where a pixel word is a whole number of ``simd``-code engine words (``simd`` divides the
channels) each pixel read goes straight into the engine's buffer (``mixq_window_stream``: no
window held in registers); otherwise the window is gathered into a register and copied one
word per cycle (``mixq_window``: the first layer's single-channel pixels, depthwise layers); the
engine's input vector is therefore in (ky, kx, channel) order, and the layer's weight
columns are permuted to match (a linear layer after a flatten of a ``C x H x W`` map reads
the whole map as one window: (y, x, channel) order). The *collector*
(:mod:`mixq.rtl.assemble`) shifts each requantizer lane's codes into a register of its own (a
lane's rows come in a fixed order, so the pixel word is fixed wiring) and max-pools per lane,
one comparator per lane, before writing the next buffer. The last layer has no requantizer after it
in the integer model: its engine's requantizer is set to the identity
(``q = acc_nb * 2**g + B``, clamped to the accumulator's proven bound), so the output
stream carries the integer engine's accumulators (CNV: the 10 logits), exactly.

A value two stages read (a residual block's input) is written to one frame buffer per reader,
the writer waiting until both have a free bank, so the skip waits in its own two-bank buffer
while the branch computes; the add's pointwise stage reads the branch's and the skip's buffers
pixel by pixel. A depthwise layer's window sequencer copies the vector channel by channel
(``channels * fold`` words; :attr:`Stage.copy_words`), so its pixels cost that many cycles
when that is more than the engine's ``tiles * fold``: the streaming estimator does not count
the copy yet, and a depthwise layer with many channels is slower here than estimated.

Streams: ``s_axis_tdata`` is one input pixel per beat — the codes of the network's first
quantizer (the float-to-code quantizer runs on the host), channel ``c`` at bits
``[c*B +: B]`` — a frame is ``H*W`` beats in raster order (``s_axis_tlast`` is not
needed). ``m_axis_tdata`` is one output code per beat, sign-extended, pixel by pixel and
channel by channel; ``m_axis_tlast`` marks a frame's last code. Reset ``rst`` is
synchronous, active high, like the layer engines'.

Cycles. A pixel costs ``max(tiles * fold, reads, copy, 3)`` cycles (a streamed window
``max(tiles * fold, fold + 1)``): the engine computes vectors back to back while the window
sequencer reads the next window (one pixel word per cycle) and copies it into the engine's
other input bank, so a layer whose window has more pixels than its engine has cycles per
vector (a first layer on 3 channels: 9 reads for 1 cycle of computing) is bound by its reads.
Such a window keeps the columns the next one shares where the stride allows
(:attr:`Stage.reuse`), so a row's windows after its first read ``kh * stride`` pixels; where the
reads still bind, it reads its ``kh`` rows in parallel (:attr:`Stage.rows`: the buffer it reads gets
``kh`` read ports, a copy of its memory each), a window column a cycle. The rule
is :mod:`mixq.hw.window`, which the streaming estimator (:mod:`mixq.hw.units`) prices too, so
the estimator's cycles per frame are this design's less its fill and drain. A
frame adds a fixed overhead (:attr:`Stage.frame_overhead`: the first window, the last
vector's pipeline, the frame handshake; a layer does not start the next frame before the
last output of this one). :attr:`NetworkRtl.estimate` gives both figures per layer; the
simulation measures the real one (:mod:`mixq.rtl.netsim`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mixq.engine.model import IntModel
from mixq.errors import ModelError
from mixq.rtl.assemble import CollectorPlan, generate_collector, plan_collector
from mixq.rtl.frames import buffer_bits, frame_banks, rings_of, schedule
from mixq.rtl.glue import GLUE_VERILOG
from mixq.rtl.layer import LayerRtl, generate_layer
from mixq.rtl.netgraph import (
    DEFAULT_PE,
    DEFAULT_SIMD,
    GatherStage,
    Graph,
    PointStage,
    Stage,
    default_folding,
    lower_graph,
    lower_network,
)
from mixq.rtl.pointwise import generate_gather, generate_pointwise


@dataclass
class NetworkRtl:
    """The generated accelerator: Verilog files (name -> text), memory files (name -> (words, width))."""

    name: str
    top: str
    stages: list[Stage]
    files: dict[str, str] = field(default_factory=dict)
    mems: dict[str, tuple[list[int], int]] = field(default_factory=dict)
    in_width: int = 8  # s_axis_tdata bits
    in_pixels: int = 1  # beats per input frame
    out_width: int = 8  # m_axis_tdata bits
    out_elems: int = 1  # beats per output frame
    graph: Graph | None = None  # every stage and frame buffer (:func:`mixq.rtl.netgraph.lower_graph`)
    rings: dict[int, int] = field(default_factory=dict)  # ring buffers: buffer index -> rows
    banks: dict[int, int] = field(default_factory=dict)  # frame buffers: buffer index -> banks (mixq.rtl.frames)

    @property
    def sources(self) -> list[str]:
        """The design's Verilog files, in compile order (what ``files.f`` lists)."""
        return list(self.files)

    def estimate(self) -> dict[str, Any]:
        """Cycles per frame: the streaming estimator's (``pixels * tiles * fold`` per layer, the slowest sets
        the interval) beside this design's model (:attr:`Stage.cycles`), per layer and for the frame."""
        est = [int(s.layout.estimate.cycles) for s in self.stages]
        layers = [{"layer": s.name, "pe": s.layout.estimate.pe, "simd": s.layout.simd, "fold": s.layout.fold,
                   "tiles": s.layout.tiles, "window": s.window_reads, "estimator_cycles": e,
                   "design_cycles": s.cycles}
                  for s, e in zip(self.stages, est, strict=True)]
        out: dict[str, Any] = {"estimator_cycles_per_frame": max(est), "estimator_latency_cycles": sum(est)}
        if self.graph is None:
            return {**out, "design_cycles_per_frame": max(s.cycles for s in self.stages), "layers": layers}
        g = self.graph
        sched = schedule(g, self.rings)
        bits = buffer_bits(g, self.rings, self.banks)
        bufs = [{"value": b.value, "shape": list(b.shape), "bits": b.bits,
                 **({"rows": self.rings[k]} if k in self.rings else {"banks": self.banks[k]}), "memory_bits": m}
                for k, (b, m) in enumerate(zip(g.buffers, bits, strict=True))]
        return {**out, "design_cycles_per_frame": sched.interval, "design_latency_cycles": round(sched.latency),
                "buffer_memory_bits": sum(bits), "buffers": bufs, "layers": layers}



# ---------------------------------------------------------------- Verilog

def _bits(n: int) -> int:
    return max(1, (max(n, 1) - 1).bit_length())


def _read_aw(ring_rows: int, h: int, w: int, ports: int) -> int:
    """Bits of one read address of an ``h x w``-pixel buffer: a frame's ``h * w`` words; a ring's ``ring_rows * w``,
    or where a window reads its rows in parallel (``ports`` > 1, its addresses side by side on one bus) the wider
    of that and the window's own ``h * w``."""
    if not ring_rows:
        return _bits(h * w)
    return _bits(ring_rows * w) if ports == 1 else max(_bits(ring_rows * w), _bits(h * w))


def _bus(bits: int) -> int:
    return max(8, 8 * math.ceil(bits / 8))


def _nbe(bits: int) -> int:
    """Byte enables of a ``bits``-wide buffer word."""
    return -(-bits // 8)


def _unpermute(fb: str, plan: CollectorPlan | None, bits: int, ports: int = 1) -> str:
    """``{fb}_rdata`` (channel ``c`` at field ``c``) from the stored ``{fb}_word``, for each of the buffer's
    ``ports`` read ports (pixel words side by side): a layer's collector stores its codes in arrival order
    (``plan.pos``), by wiring; other producers store channel order."""
    if plan is None:
        return f"  assign {fb}_rdata = {fb}_word;"
    runs: list[tuple[int, int]] = []  # runs of consecutive fields, each one part-select: (first, past the last)
    c, n = 0, len(plan.pos)
    while c < n:
        e = c + 1
        while e < n and plan.pos[e] == plan.pos[e - 1] + 1:
            e += 1
        runs.append((c, e))
        c = e
    out = [f"assign {fb}_rdata[{o + e * bits - 1}:{o + c * bits}] = "
           f"{fb}_word[{o + (plan.pos[e - 1] + 1) * bits - 1}:{o + plan.pos[c] * bits}];"
           for o in (q * n * bits for q in range(ports)) for c, e in runs]
    return "  " + " ".join(out)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def generate_network(model: IntModel, values: Mapping[str, torch.Tensor], name: str = "net",
                     folding: Mapping[str, tuple[int, int]] | None = None, core: str = "auto",
                     part: str = "xc7z020", weights: str = "auto", buffers: str = "ring") -> NetworkRtl:
    """Verilog of the whole accelerator ``<name>_top`` (see the module docstring); memory paths are relative
    (``$readmemh`` reads them from the simulator's working directory, the output folder)."""
    g = lower_graph(model, values, folding, core, part)
    top = f"{name}_top"
    stages = g.stages
    net = NetworkRtl(name, top, stages, graph=g)
    rings = rings_of(g) if buffers == "ring" else {}
    net.rings, net.banks = rings, frame_banks(g, rings)
    net.files[f"{name}_glue.v"] = GLUE_VERILOG
    # every node's Verilog name: layer stages l0, l1, ... (the testbench probes them), pointwise stages p0, ...
    names: list[str] = []
    engines: dict[int, LayerRtl] = {}
    collectors: list[str] = []  # the layer stages' collectors, one file (the glue's part of the design)
    plans: dict[int, CollectorPlan] = {}  # a layer stage's buffer word: its codes in arrival order
    for i, st in enumerate(g.nodes):
        if isinstance(st, Stage):
            li = sum(isinstance(x, Stage) for x in g.nodes[:i])
            names.append(f"l{li}")
            rtl = generate_layer(st.layout, f"{name}_l{li}_{_slug(st.name)}", weights=weights, banks=2,
                                 wpc=st.copy_lanes)
            engines[i] = rtl
            net.files[f"{rtl.top}.v"] = rtl.verilog
            oc, oh, ow = st.out_shape
            try:
                plans[i] = plan_collector(rtl.lane_rows, rtl.lane_events, oc, st.out_bits)
            except ModelError as e:
                raise ModelError(f"layer {st.name!r}: {e}") from None
            collectors.append(generate_collector(f"{rtl.top}_col", plans[i], st.out_bits, rtl.q_bits,
                                                 signed=st.out_signed, out_hw=st.out_hw, pool=st.pool,
                                                 pooled_hw=(oh, ow)))
            net.mems.update(rtl.mems)
        else:
            pi = sum(not isinstance(x, Stage) for x in g.nodes[:i])
            names.append(f"p{pi}")
            mod = f"{name}_p{pi}_{_slug(st.value)}"
            bufs = [g.buffers[k] for k in g.inputs_of(i)]
            if isinstance(st, GatherStage):
                text, mems = generate_gather(st, bufs[0], mod, ring=g.inputs_of(i)[0] in rings)
            else:
                text, mems = generate_pointwise(st, bufs, mod)
            net.files[f"{mod}.v"] = text
            net.mems.update(mems)
    net.files[f"{name}_col.v"] = "".join(collectors)
    bin_ = next(b for b in g.buffers if b.producer == -1)
    bout = next(b for b in g.buffers if b.consumer == -1)
    c0, h0, w0 = bin_.shape
    net.in_width, net.in_pixels = _bus(c0 * bin_.bits), h0 * w0
    net.out_width = _bus(bout.bits)
    net.out_elems = bout.shape[0] * bout.shape[1] * bout.shape[2]
    lines: list[str] = []
    v = lines.append
    v(f"// {top}: whole-network accelerator generated by mixq.rtl.network (frame pipeline of per-layer frame")
    v("// buffers; see the module docstring). Layers: " + ", ".join(
        f"{s.name} (pe {s.layout.estimate.pe}, simd {s.layout.simd})" for s in stages))
    v(f"module {top} (")
    v("  input clk, input rst,")
    v(f"  input [{net.in_width - 1}:0] s_axis_tdata, input s_axis_tvalid, output s_axis_tready, "
      "input s_axis_tlast,")
    v(f"  output [{net.out_width - 1}:0] m_axis_tdata, output m_axis_tvalid, output m_axis_tlast, "
      "input m_axis_tready")
    v(");")
    for j, b in enumerate(g.buffers):
        (c, h, w), bb = b.shape, b.bits
        pw, n, aw = c * bb, h * w, _bits(h * w)
        r = rings.get(j, 0)
        kb = _bits(net.banks.get(j, 2))
        v(f"  wire fb{j}_commit, fb{j}_release, fb{j}_can_write, fb{j}_can_read; "
          f"wire [{kb - 1}:0] fb{j}_pbank, fb{j}_cbank;")
        reader = g.nodes[b.consumer] if b.consumer >= 0 else None  # a streamed window reads when it says
        rp = reader.rows if isinstance(reader, Stage) else 1  # read ports: a window reading its rows in parallel
        v(f"  wire fb{j}_we; wire [{_nbe(pw) - 1}:0] fb{j}_wbe; wire [{aw - 1}:0] fb{j}_waddr; "
          f"wire [{pw - 1}:0] fb{j}_wdata; wire [{rp * pw - 1}:0] fb{j}_rdata, fb{j}_word;")
        v(_unpermute(f"fb{j}", plans.get(b.producer), bb, rp))
        v(f"  wire fb{j}_re;" if isinstance(reader, Stage) and reader.streamed else f"  wire fb{j}_re = 1'b1;")
        v(f"  wire fb{j}_reserve; wire [7:0] fb{j}_rel, fb{j}_avail;")
        if r:
            ra = _read_aw(r, h, w, rp)
            v(f"  // ring buffer {j}: {b.value} ({c} x {h} x {w} codes of {bb} bits), {r} rows")
            v(f"  wire [{rp * ra - 1}:0] fb{j}_raddr; assign fb{j}_can_read = 1'b1;")
            v(f"  mixq_rowbuf #(.PW({pw}), .W({w}), .R({r}), .AW({ra}), .AUTO({int(b.producer == -1)}), .RP({rp})) "
              f"fb{j} "
              f"(.clk(clk), .rst(rst), .reserve(fb{j}_reserve), .we(fb{j}_we), .wbe(fb{j}_wbe), "
              f".wdata(fb{j}_wdata), .can_write(fb{j}_can_write), .rel_n(fb{j}_rel), .avail(fb{j}_avail), "
              f".re(fb{j}_re), .raddr(fb{j}_raddr), "
              f".rdata(fb{j}_word));")
            continue
        k = net.banks[j]
        v(f"  // frame buffer {j}: {b.value} ({c} x {h} x {w} codes of {bb} bits), {k} banks")
        v(f"  wire [{rp * aw - 1}:0] fb{j}_raddr; assign fb{j}_avail = 8'd0;")
        v(f"  mixq_pingpong #(.K({k}), .KB({kb})) fb{j}_pp (.clk(clk), .rst(rst), .p_commit(fb{j}_commit), "
          f".c_release(fb{j}_release), .p_bank(fb{j}_pbank), .c_bank(fb{j}_cbank), .can_write(fb{j}_can_write), "
          f".can_read(fb{j}_can_read));")
        v(f"  mixq_fbuf #(.PW({pw}), .N({n}), .AW({aw}), .K({k}), .KB({kb}), .RP({rp})) fb{j} (.clk(clk), "
          f".wbank(fb{j}_pbank), "
          f".wbe(fb{j}_wbe), .waddr(fb{j}_waddr), .wdata(fb{j}_wdata), .re(fb{j}_re), .rbank(fb{j}_cbank), "
          f".raddr(fb{j}_raddr), .rdata(fb{j}_word));")

    def fan_out(p: str, producer: int) -> None:
        """The producer ``p``'s write port and commit to every buffer it writes; ``{p}_cw``: all have room."""
        outs = [k for k, x in enumerate(g.buffers) if x.producer == producer]
        ring = [k for k in outs if rings.get(k)]  # a ring buffer has one writer's rows reserved by its window
        cw = "1'b1" if ring and producer >= 0 else " & ".join(f"fb{k}_can_write" for k in outs)
        v(f"  wire {p}_cw = {cw};")
        for k in outs:
            v(f"  assign fb{k}_we = {p}_we; assign fb{k}_wbe = {p}_wbe; assign fb{k}_waddr = {p}_waddr; "
              f"assign fb{k}_wdata = {p}_wdata; assign fb{k}_commit = {p}_commit;")

    v(f"  wire in_we, in_commit; wire [{_bits(h0 * w0) - 1}:0] in_waddr; wire [{c0 * bin_.bits - 1}:0] in_wdata;")
    v(f"  wire [{_nbe(c0 * bin_.bits) - 1}:0] in_wbe = {{{_nbe(c0 * bin_.bits)}{{in_we}}}};")
    fan_out("in", -1)
    v(f"  mixq_axis_in #(.DW({net.in_width}), .PW({c0 * bin_.bits}), .N({h0 * w0}), .AW({_bits(h0 * w0)})) "
      "axis_in (.clk(clk), .rst(rst), .s_tdata(s_axis_tdata), .s_tvalid(s_axis_tvalid), .s_tready(s_axis_tready), "
      ".s_tlast(s_axis_tlast), .can_write(in_cw), .we(in_we), .waddr(in_waddr), .wdata(in_wdata), "
      ".commit(in_commit));")
    for i, st in enumerate(g.nodes):
        p = names[i]
        ins = g.inputs_of(i)
        oc, oh, ow = st.out_shape if isinstance(st, Stage) else st.shape
        ob = st.out_bits
        v(f"  wire {p}_we, {p}_commit; wire [{_bits(oh * ow) - 1}:0] {p}_waddr; wire [{oc * ob - 1}:0] {p}_wdata;")
        v(f"  wire [{_nbe(oc * ob) - 1}:0] {p}_wbe;")
        if not isinstance(st, Stage):  # a pointwise or gather stage writes whole words
            v(f"  assign {p}_wbe = {{{_nbe(oc * ob)}{{{p}_we}}}};")
        fan_out(p, i)
        if not isinstance(st, Stage):
            ia_ = _bits(st.in_shape[1] * st.in_shape[2]) if isinstance(st, GatherStage) else _bits(oh * ow)
            v(f"  wire {p}_release, {p}_rel, {p}_reserve; wire [{ia_ - 1}:0] {p}_raddr; "
              f"wire [{_bits(ow) - 1}:0] {p}_rcol;")
            for k in ins:  # an input of one pixel (a gate over the channels) is read at 0 for every pixel
                one = g.buffers[k].shape[1] * g.buffers[k].shape[2] == 1 < oh * ow and isinstance(st, PointStage)
                col = k in rings and isinstance(st, PointStage)  # a gather's table holds ring addresses itself
                addr = "0" if one else f"{p}_rcol" if col else f"{p}_raddr"
                v(f"  assign fb{k}_release = {p}_release; assign fb{k}_raddr = {addr};")
                if k in rings:  # a pointwise stage releases a row at a time, a gather what its row table says
                    rel = f"{p}_rel8" if isinstance(st, GatherStage) else f"{{7'd0, {p}_rel}}"
                    v(f"  assign fb{k}_rel = {rel};")
            rd = ", ".join(f".rdata{t}(fb{k}_rdata)" for t, k in enumerate(ins))
            ring_out = [k for k in g.outputs_of(i) if k in rings]  # rows of its ring input(s) and output
            for k in ring_out:
                v(f"  assign fb{k}_reserve = {p}_reserve;")
            row_out = " & ".join(f"fb{k}_can_write" for k in ring_out) or "1'b1"
            if isinstance(st, PointStage):
                row_in = " & ".join(f"(fb{k}_avail != 8'd0)" for k in ins if k in rings) or "1'b1"
                rows = (f".row_in({row_in}), .row_out({row_out}), .rel({p}_rel), .reserve({p}_reserve), "
                        f".rcol({p}_rcol), ")
            else:
                v(f"  wire [7:0] {p}_rel8;")
                rows = (f".avail(fb{ins[0]}_avail), .rel({p}_rel8), .row_out({row_out}), .reserve({p}_reserve), ")
            v(f"  {name}_{p}_{_slug(st.value)} {p}_u (.clk(clk), .rst(rst), "
              f".can_read({' & '.join(f'fb{k}_can_read' for k in ins)}), .can_write({p}_cw), "
              f".release_({p}_release), .commit({p}_commit), {rows}.raddr({p}_raddr), {rd}, .we({p}_we), "
              f".waddr({p}_waddr), .wdata({p}_wdata));")
            continue
        rtl = engines[i]
        lay = st.layout
        c, h, w = st.in_shape
        kh, kw = st.kernel
        lw = lay.simd * lay.abits
        ia = _bits(rtl.in_words)
        nr, rw, qw = rtl.nr, rtl.row_bits, rtl.q_bits
        if st.out_bits > qw:
            raise ModelError(f"layer {st.name!r}: {st.out_bits}-bit output codes from a {qw}-bit requantizer")
        (k0,) = ins
        dwc = c if lay.data.op == "conv" and lay.data.groups > 1 else 0
        v(f"  // layer {p}: {st.name} ({lay.data.op}{', depthwise' if dwc else ''}, window {kh}x{kw}, pool {st.pool})")
        v(f"  wire {p}_end, {p}_done, {p}_iwe, {p}_start, {p}_ready; wire [{ia - 1}:0] {p}_addr; "
          f"wire [{st.copy_lanes * lw - 1}:0] {p}_data;")
        v(f"  wire [{nr - 1}:0] {p}_ov; wire [{nr * rw - 1}:0] {p}_orow; wire [{nr * qw - 1}:0] {p}_oq;")
        v(f"  assign fb{k0}_release = {p}_end; assign {p}_commit = {p}_end;")
        gc = c // lay.data.groups if dwc else 1  # input channels per group (depthwise: 1)
        extra = "" if st.streamed else (f", .DWC({dwc}), .B({lay.abits}), .SIMD({lay.simd}), .WPC({st.copy_lanes}), "
                                        f".GC({gc}), .RS({st.reuse}), .RP({st.rows})")
        kos = g.outputs_of(i)  # rings: all of them (one, or a fan-out of rings: frames.ring_rows), or none
        rin, rout = rings.get(k0, 0), int(all(rings.get(k, 0) for k in kos))
        extra += f", .RIN({rin}), .ROUT({rout}), .PK({st.pool}), .PHO({oh})"
        cres = " & ".join(f"fb{k}_can_write" for k in kos) if rout else "1'b0"
        res_ = f"{p}_reserve" if rout else ""
        if rout:
            v(f"  wire {p}_reserve; " + " ".join(f"assign fb{k}_reserve = {p}_reserve;" for k in kos))
        v(f"  mixq_window{'_stream' if st.streamed else ''} #(.IH({h}), .IW({w}), .PW({c * st.in_bits}), .KH({kh}), "
          f".KW({kw}), .SH({st.stride[0]}), .SW({st.stride[1]}), .PH({st.padding[0]}), .PL({st.padding[1]}), "
          f".DH({st.dilation[0]}), .DW({st.dilation[1]}), "
          f".OH({st.out_hw[0]}), .OW({st.out_hw[1]}), .FOLD({lay.fold}), .LW({lw}), "
          f".AW({_read_aw(rings.get(k0, 0), h, w, st.rows) if st.rows > 1 else _bits(h * w)}), "
          f".IA({ia}){extra}) {p}_win "
          f"(.clk(clk), .rst(rst), .can_read(fb{k0}_can_read), .can_write({p}_cw), .done({p}_done), "
          f".frame_end({p}_end), .raddr(fb{k0}_raddr), .rdata(fb{k0}_rdata), .avail(fb{k0}_avail), .rel_n(fb{k0}_rel), "
          f".can_reserve({cres}), .reserve({res_}), .in_we({p}_iwe), .in_addr({p}_addr), "
          f".in_data({p}_data), .start({p}_start), .ready({p}_ready){f', .re(fb{k0}_re)' if st.streamed else ''});")
        load = ", .wl_we(1'b0), .wl_sel(0), .wl_addr(0), .wl_data(0)" if rtl.load_port else ""
        v(f"  {rtl.top} {p}_eng (.clk(clk), .rst(rst), .in_we({p}_iwe), .in_addr({p}_addr), .in_data({p}_data), "
          f".start({p}_start), .busy(), .ready({p}_ready), .out_valid({p}_ov), .out_row({p}_orow), "
          f".out_q({p}_oq){load});")
        v(f"  {rtl.top}_col {p}_col (.clk(clk), .rst(rst), .ov({p}_ov), .oq({p}_oq), .we({p}_we), .wbe({p}_wbe), "
          f".waddr({p}_waddr), .wdata({p}_wdata), .done({p}_done));")
    ko = g.buffers.index(bout)
    oc, oh, ow = bout.shape
    v(f"  mixq_axis_out #(.ROWS({oc}), .OB({bout.bits}), .DW({net.out_width}), .NPIX({oh * ow}), "
      f".AW({_bits(oh * ow)})) axis_out (.clk(clk), .rst(rst), .can_read(fb{ko}_can_read), "
      f".release_(fb{ko}_release), .raddr(fb{ko}_raddr), .rdata(fb{ko}_rdata), .m_tdata(m_axis_tdata), "
      ".m_tvalid(m_axis_tvalid), .m_tlast(m_axis_tlast), .m_tready(m_axis_tready));")
    v("endmodule")
    net.files[f"{top}.v"] = "\n".join(lines) + "\n"
    return net


def input_words(net: NetworkRtl, codes: np.ndarray) -> list[int]:
    """The input stream's beats for ``codes`` (N, C, H, W) (or (N, F)): one pixel word per beat, raster order."""
    bin_ = [b for b in net.graph.buffers if b.producer == -1] if net.graph else []
    (c, h, w), bits = (bin_[0].shape, bin_[0].bits) if bin_ else (net.stages[0].in_shape, net.stages[0].in_bits)
    x = np.asarray(codes, dtype=np.int64).reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, c)
    mask = (1 << bits) - 1
    sh = np.arange(c, dtype=object) * bits
    return [int(sum((int(v) & mask) << int(p) for v, p in zip(px, sh, strict=True))) for px in x]


def output_order(net: NetworkRtl, out: np.ndarray) -> np.ndarray:
    """The engine's output (N, C, H, W) or (N, C) in the output stream's order: (N, H*W*C), pixel-major."""
    bout = [b for b in net.graph.buffers if b.consumer == -1] if net.graph else []
    c, h, w = bout[0].shape if bout else net.stages[-1].out_shape
    return np.asarray(out, dtype=np.int64).reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, h * w * c)

__all__ = ["DEFAULT_PE", "DEFAULT_SIMD", "NetworkRtl", "Stage", "default_folding", "generate_network", "input_words",
           "lower_graph", "lower_network", "output_order"]
