"""The whole streaming accelerator of an integer model in Verilog: layer engines + glue behind AXI4-Stream.

:func:`lower_network` walks an :class:`~mixq.engine.model.IntModel` that is one chain
``quantize -> (conv|linear -> clamp* -> maxpool? -> flatten? -> requant)* -> conv|linear``
(CNV's shape) into :class:`Stage` s, one per compute layer, each with its layer engine
(:func:`mixq.rtl.layer.generate_layer`, reused as it is: no second MAC datapath) laid out
at a folding ``(pe, simd)``; :func:`generate_network` writes the top ``<name>_top``.

Architecture (this first landing): a **frame pipeline of per-layer frame buffers**::

    s_axis -> [fbuf0] -> window0 -> engine0 -> collect0 (+max-pool) -> [fbuf1] -> window1 -> ...
           ... -> engineN -> collectN -> [fbufN+1] -> m_axis

Each frame buffer holds two frames (ping-pong, :mod:`mixq.rtl.glue`), so every layer works
on its own frame while its neighbours work on the next / previous one; a layer starts a
frame when its input bank is full and its output bank is free. A layer's *window
sequencer* reads the ``kh x kw`` window of each output pixel from its input frame buffer
(one pixel word — all channels — per cycle; zeros on the padding), copies it into the
engine's input-vector buffer one ``simd``-code word per cycle and starts the engine (the
engine's input buffer has two banks, so the copy of the next window overlaps the current
computation and the engine runs vectors back to back); the
engine's input vector is therefore in (ky, kx, channel) order, and the layer's weight
columns are permuted to match (a linear layer after a flatten of a ``C x H x W`` map reads
the whole map as one window: (y, x, channel) order). The *collector* assembles the
requantized codes of a pixel and applies a ``k x k`` / stride ``k`` max-pool on a line
buffer before writing the next frame buffer. The last layer has no requantizer after it
in the integer model: its engine's requantizer is set to the identity
(``q = acc_nb * 2**g + B``, clamped to the accumulator's proven bound), so the output
stream carries the integer engine's accumulators (CNV: the 10 logits), exactly.

Streams: ``s_axis_tdata`` is one input pixel per beat — the codes of the network's first
quantizer (the float-to-code quantizer runs on the host), channel ``c`` at bits
``[c*B +: B]`` — a frame is ``H*W`` beats in raster order (``s_axis_tlast`` is not
needed). ``m_axis_tdata`` is one output code per beat, sign-extended, pixel by pixel and
channel by channel; ``m_axis_tlast`` marks a frame's last code. Reset ``rst`` is
synchronous, active high, like the layer engines'.

Cycles. The streaming estimator (:mod:`mixq.hw.units`) counts
``pixels * tiles * fold`` cycles per frame for a layer (its engine never idles) and the
slowest layer sets the frame interval. Here a pixel costs ``max(tiles * fold, kh * kw, 3)``
cycles: the engine computes vectors back to back while the window sequencer reads the
next window (one pixel word per cycle) and copies it into the engine's other input bank,
so only a layer whose window has more pixels than its engine has cycles per vector (CNV's
first layer: 9 reads for 2 cycles of computing) is slower than the estimate per pixel. A
frame adds a fixed overhead (:attr:`Stage.frame_overhead`: the first window, the last
vector's pipeline, the frame handshake; a layer does not start the next frame before the
last output of this one). :attr:`NetworkRtl.estimate` gives both figures per layer; the
simulation measures the real one (:mod:`mixq.rtl.netsim`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mixq.engine.model import IntModel, IntNode
from mixq.errors import ModelError
from mixq.rtl.glue import GLUE_VERILOG
from mixq.rtl.layer import LayerRtl, generate_layer, output_latency
from mixq.rtl.layerdata import LayerData, layer_data
from mixq.rtl.layout import Layout, plan_layout
from mixq.rtl.memfile import signed_width

#: default folding caps: ``pe = min(rows, PE)``, ``simd = min(row_length, SIMD)``
DEFAULT_PE = 16
DEFAULT_SIMD = 32


@dataclass(frozen=True)
class Stage:
    """One compute layer of the pipeline and the glue around its engine."""

    name: str
    layout: Layout  # weights permuted to the stream order (see the module docstring)
    in_shape: tuple[int, int, int]  # (C, H, W) of the input frame buffer
    in_bits: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_hw: tuple[int, int]  # engine output pixels (Ho, Wo)
    pool: int  # max-pool k x k, stride k (1: none)
    out_shape: tuple[int, int, int]  # (C, H, W) written to the next frame buffer
    out_bits: int  # bits per stored code
    out_signed: bool
    head: bool  # the network output: accumulators, no requantization

    @property
    def run_cycles(self) -> int:
        """Cycles the engine computes per input vector (``tiles * fold``)."""
        return self.layout.tiles * self.layout.fold

    @property
    def window_reads(self) -> int:
        """Frame-buffer reads per output pixel (``kh * kw``, one per cycle)."""
        return self.kernel[0] * self.kernel[1]

    @property
    def pixel_cycles(self) -> int:
        """Cycles per output pixel of this design: the engine's vectors back to back (copy overlapped), or the
        window reads if slower (at least 3: a window's data come two cycles after its last read)."""
        return max(self.run_cycles, self.window_reads, 3)

    @property
    def frame_overhead(self) -> int:
        """Cycles per frame besides the pixels: the first window (reads, data, copy) before the engine starts,
        the last vector's way through the engine (:func:`mixq.rtl.layer.output_latency`) and the collector, and
        the frame handshake, less one pixel interval (the last pixel's is counted in the drain)."""
        fill = self.window_reads + 3 + self.layout.fold
        return fill + output_latency(self.layout) + 5 - self.pixel_cycles

    @property
    def cycles(self) -> int:
        """Cycles per frame of this stage: its pixels at :attr:`pixel_cycles` and :attr:`frame_overhead`."""
        return self.out_hw[0] * self.out_hw[1] * self.pixel_cycles + self.frame_overhead


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
        return {"estimator_cycles_per_frame": max(est), "estimator_latency_cycles": sum(est),
                "design_cycles_per_frame": max(s.cycles for s in self.stages), "layers": layers}


# ---------------------------------------------------------------- lowering

def _consumers(model: IntModel) -> dict[str, list[IntNode]]:
    out: dict[str, list[IntNode]] = {}
    for n in model.nodes:
        for i in n.inputs:
            out.setdefault(i, []).append(n)
    return out


def _only(cons: dict[str, list[IntNode]], node: IntNode) -> IntNode:
    nxt = cons.get(node.name, [])
    if len(nxt) != 1:
        raise ModelError(f"network: {node.name!r} ({node.op}) feeds {len(nxt)} nodes; the network builder "
                         "takes one chain of layers (residual adds and concatenations are not supported yet)")
    return nxt[0]


def _chw(shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    raise ModelError(f"network: {where} has shape {shape}; the network builder takes (C, H, W) or (F,) maps")


def _unflattened(model: IntModel, values: Mapping[str, torch.Tensor]) -> tuple[IntModel, dict[str, torch.Tensor]]:
    """The model without its flatten nodes (a requant after one works per channel on the unflattened map), so
    :func:`mixq.rtl.layerdata.layer_data` sees ``conv -> clamp -> maxpool -> requant``; values to match."""
    vals = dict(values)
    shapes: dict[str, tuple[int, ...]] = {}
    drop: dict[str, str] = {}  # flatten -> its input
    nodes: list[IntNode] = []
    for n in model.nodes:
        if n.op == "flatten":
            drop[n.name] = drop.get(n.inputs[0], n.inputs[0])
            vals.pop(n.name, None)
            continue
        if not any(i in drop for i in n.inputs):
            nodes.append(n)
            continue
        src = drop[n.inputs[0]]
        shape = shapes.get(src, model.node(src).shape)
        arrays = dict(n.arrays)
        if n.op == "requant":
            c = int(shape[0])
            for k in ("M", "n"):
                a = np.asarray(arrays[k])
                if a.size > 1:
                    per = a.reshape(c, -1)
                    if not (per == per[:, :1]).all():
                        raise ModelError(f"network: {n.name!r} requantizes the features of one channel "
                                         "differently; the network builder needs one rule per channel")
                    arrays[k] = per[:, :1].reshape((c,) + (1,) * (len(shape) - 1))
            if n.name in vals:
                vals[n.name] = vals[n.name].reshape((-1, *shape))
            shapes[n.name] = tuple(shape)
        nodes.append(dataclasses.replace(n, inputs=(src,), shape=tuple(shape), arrays=arrays))
    return IntModel(tuple(nodes), model.input_shape, drop.get(model.output, model.output), dict(model.meta)), vals


def _head_data(model: IntModel, values: Mapping[str, torch.Tensor], node: IntNode) -> LayerData:
    """The network's last layer as :class:`LayerData` whose requantizer is the identity on the accumulator."""
    rows = int(node.arrays["weight"].shape[0])
    g = int(node.attrs.get("acc_frac_bits", 0))
    bias = np.asarray(node.arrays["bias"]).reshape(-1)
    bias = np.array([int(bias[0])] * rows if bias.size == 1 else [int(b) for b in bias], dtype=object)
    bound = int(node.bound)
    src = model.node(node.inputs[0])
    a = node.attrs
    return LayerData(
        name=node.name, op=node.op, weight=np.asarray(node.arrays["weight"], dtype=np.int64),
        row_format=np.asarray(node.arrays["row_format"], dtype=np.int64),
        formats=tuple(dict(f) for f in a["formats"]), in_fmt=dict(src.attrs["fmt"]),
        out_fmt={"kind": "fixed", "bits": signed_width([-bound, bound]), "signed": True},
        stride=tuple(a.get("stride", (1, 1))), padding=tuple(a.get("padding", (0, 0))),  # type: ignore[arg-type]
        groups=int(a.get("groups", 1)),
        mult=np.array([1 << g] * rows, dtype=object), const=bias, shift=0,
        lo=np.array([-bound] * rows, dtype=object), hi=np.array([bound] * rows, dtype=object),
        x=values[node.inputs[0]].numpy().astype(np.int64), y=values[node.name].numpy().astype(np.int64),
        bias=bias, pooled=False)


def _permuted(lay: Layout, in_shape: tuple[int, int, int]) -> Layout:
    """``lay`` with its weight columns in stream order: (ky, kx, c) for a conv, (y, x, c) for a linear layer."""
    d = lay.data
    w = d.weight
    c, h, wd = in_shape
    if d.op == "conv":
        p = w.transpose(0, 2, 3, 1)
    else:
        if w.shape[1] != c * h * wd:
            raise ModelError(f"layer {d.name!r}: {w.shape[1]} input features for a {c}x{h}x{wd} map")
        p = w.reshape(d.rows, c, h * wd).transpose(0, 2, 1)
    return dataclasses.replace(lay, data=dataclasses.replace(d, weight=np.ascontiguousarray(p).reshape(w.shape)))


def default_folding(model: IntModel, pe: int = DEFAULT_PE, simd: int = DEFAULT_SIMD) -> dict[str, tuple[int, int]]:
    """A small fixed folding: ``pe = min(rows, pe)``, ``simd = min(row length, simd)`` per compute layer."""
    out = {}
    for n in model.compute_nodes():
        w = n.arrays["weight"]
        out[n.name] = (min(int(w.shape[0]), pe), min(int(np.prod(w.shape[1:])), simd))
    return out


def lower_network(model: IntModel, values: Mapping[str, torch.Tensor],
                  folding: Mapping[str, tuple[int, int]] | None = None, core: str = "auto",
                  part: str = "xc7z020") -> list[Stage]:
    """The stages of ``model`` (``values``: the engine's integers for a batch, ``keep=True``) at ``folding``
    (layer -> (pe, simd); missing layers: :func:`default_folding`). One :class:`ModelError` naming the
    node for anything the network builder does not take."""
    fold = {**default_folding(model), **dict(folding or {})}
    cons = _consumers(model)
    first = [n for n in model.nodes if n.inputs == ("input",)]
    if len(first) != 1 or first[0].op != "quantize":
        raise ModelError("network: the model's input must feed one quantizer (the codes the input stream carries)")
    flat_model, flat_values = _unflattened(model, values)
    cur = first[0]
    in_shape = _chw(cur.shape, cur.name)
    in_bits = int(cur.attrs["fmt"].get("bits", 8))
    stages: list[Stage] = []
    while True:
        node = _only(cons, cur)
        while node.op == "flatten":  # a flatten of the codes: the next layer reads the map as it is
            node = _only(cons, node)
        if node.op not in ("conv", "linear"):
            raise ModelError(f"network: {node.name!r} ({node.op}) after {cur.name!r} is not supported by the "
                             "network builder (conv / linear, clamps, max-pool, flatten, requant)")
        a = node.attrs
        if node.op == "conv":
            if int(a.get("groups", 1)) != 1:
                raise ModelError(f"layer {node.name!r}: grouped / depthwise convolution is not supported by the "
                                 "network builder yet")
            if tuple(a.get("dilation", (1, 1))) != (1, 1):
                raise ModelError(f"layer {node.name!r}: dilated convolution is not supported by the network builder")
            kh, kw = (int(v) for v in node.arrays["weight"].shape[2:])
            kernel, stride = (kh, kw), (int(a["stride"][0]), int(a["stride"][1]))
            padding = (int(a["padding"][0]), int(a["padding"][1]))
            out_hw = (int(node.shape[1]), int(node.shape[2]))
        else:  # a window over the whole input map, one output pixel
            kernel, stride, padding, out_hw = (in_shape[1], in_shape[2]), (1, 1), (0, 0), (1, 1)
        head = node.name == model.output
        pool = 1
        tail = node
        if head:
            d = _head_data(flat_model, flat_values, flat_model.node(node.name))
        else:
            d = layer_data(flat_model, flat_values, node.name)
            # walk the original chain for the pool and the next requant
            while True:
                tail = _only(cons, tail)
                if tail.op == "maxpool":
                    ta = tail.attrs
                    k = tuple(ta["kernel"])
                    if (k[0] != k[1] or tuple(ta["stride"]) != k or tuple(ta["padding"]) != (0, 0)
                            or tuple(ta["dilation"]) != (1, 1) or ta["ceil_mode"]):
                        raise ModelError(f"network: max-pool {tail.name!r} is not k x k with stride k and no "
                                         "padding; the network builder's pooling unit needs that")
                    if pool != 1:
                        raise ModelError(f"network: {tail.name!r} is a second max-pool after {node.name!r}")
                    pool = int(k[0])
                if tail.op == "requant":
                    break
        pe, simd = fold.get(node.name, (1, 1))
        lay = _permuted(plan_layout(d, pe, simd, core, part), in_shape)
        rows = d.rows
        if head:
            out_shape = (rows, out_hw[0], out_hw[1])
            out_bits, out_signed = signed_width([int(v) for v in d.lo] + [int(v) for v in d.hi]), True
        else:
            out_shape = (rows, out_hw[0] // pool, out_hw[1] // pool)
            out_bits, out_signed = int(tail.attrs["fmt"].get("bits", 8)), bool(tail.attrs["fmt"].get("signed"))
        stages.append(Stage(node.name, lay, in_shape, in_bits, kernel, stride, padding, out_hw, pool, out_shape,
                            out_bits, out_signed, head))
        if head:
            return stages
        cur, in_shape, in_bits = tail, out_shape, out_bits


# ---------------------------------------------------------------- Verilog

def _bits(n: int) -> int:
    return max(1, (max(n, 1) - 1).bit_length())


def _bus(bits: int) -> int:
    return max(8, 8 * math.ceil(bits / 8))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def generate_network(model: IntModel, values: Mapping[str, torch.Tensor], name: str = "net",
                     folding: Mapping[str, tuple[int, int]] | None = None, core: str = "auto",
                     part: str = "xc7z020", weights: str = "auto") -> NetworkRtl:
    """Verilog of the whole accelerator ``<name>_top`` (see the module docstring); memory paths are relative
    (``$readmemh`` reads them from the simulator's working directory, the output folder)."""
    stages = lower_network(model, values, folding, core, part)
    top = f"{name}_top"
    net = NetworkRtl(name, top, stages)
    net.files[f"{name}_glue.v"] = GLUE_VERILOG
    engines: list[LayerRtl] = []
    for i, s in enumerate(stages):
        rtl = generate_layer(s.layout, f"{name}_l{i}_{_slug(s.name)}", weights=weights, banks=2)
        engines.append(rtl)
        net.files[f"{rtl.top}.v"] = rtl.verilog
        net.mems.update(rtl.mems)
    s0, sl = stages[0], stages[-1]
    c0, h0, w0 = s0.in_shape
    net.in_width, net.in_pixels = _bus(c0 * s0.in_bits), h0 * w0
    net.out_width = _bus(sl.out_bits)
    net.out_elems = sl.out_shape[0] * sl.out_shape[1] * sl.out_shape[2]
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
    # frame buffers: fb{i} feeds stage i; fb{n} feeds the output stream
    shapes = [s.in_shape for s in stages] + [sl.out_shape]
    bits = [s.in_bits for s in stages] + [sl.out_bits]
    for j, ((c, h, w), b) in enumerate(zip(shapes, bits, strict=True)):
        pw, n, aw = c * b, h * w, _bits(h * w)
        v(f"  // frame buffer {j}: {c} x {h} x {w} codes of {b} bits, two banks")
        v(f"  wire fb{j}_commit, fb{j}_release, fb{j}_pbank, fb{j}_cbank, fb{j}_can_write, fb{j}_can_read;")
        v(f"  wire fb{j}_we; wire [{aw - 1}:0] fb{j}_waddr, fb{j}_raddr; wire [{pw - 1}:0] fb{j}_wdata, fb{j}_rdata;")
        v(f"  mixq_pingpong fb{j}_pp (.clk(clk), .rst(rst), .p_commit(fb{j}_commit), .c_release(fb{j}_release), "
          f".p_bank(fb{j}_pbank), .c_bank(fb{j}_cbank), .can_write(fb{j}_can_write), .can_read(fb{j}_can_read));")
        v(f"  mixq_fbuf #(.PW({pw}), .N({n}), .AW({aw})) fb{j} (.clk(clk), .wbank(fb{j}_pbank), .we(fb{j}_we), "
          f".waddr(fb{j}_waddr), .wdata(fb{j}_wdata), .rbank(fb{j}_cbank), .raddr(fb{j}_raddr), "
          f".rdata(fb{j}_rdata));")
    v(f"  mixq_axis_in #(.DW({net.in_width}), .PW({c0 * s0.in_bits}), .N({h0 * w0}), .AW({_bits(h0 * w0)})) "
      "axis_in (.clk(clk), .rst(rst), .s_tdata(s_axis_tdata), .s_tvalid(s_axis_tvalid), .s_tready(s_axis_tready), "
      ".s_tlast(s_axis_tlast), .can_write(fb0_can_write), .we(fb0_we), .waddr(fb0_waddr), .wdata(fb0_wdata), "
      ".commit(fb0_commit));")
    for i, (s, rtl) in enumerate(zip(stages, engines, strict=True)):
        lay = s.layout
        c, h, w = s.in_shape
        kh, kw = s.kernel
        lw = lay.simd * lay.abits
        ia = _bits(rtl.in_words)
        nr, rw, qw = rtl.nr, rtl.row_bits, rtl.q_bits
        oc, oh, ow = s.out_shape
        if s.out_bits > qw:
            raise ModelError(f"layer {s.name!r}: {s.out_bits}-bit output codes from a {qw}-bit requantizer")
        j = i + 1
        v(f"  // layer {i}: {s.name} ({lay.data.op}, window {kh}x{kw}, pool {s.pool})")
        v(f"  wire l{i}_end, l{i}_done, l{i}_we, l{i}_start, l{i}_ready; wire [{ia - 1}:0] l{i}_addr; "
          f"wire [{lw - 1}:0] l{i}_data;")
        v(f"  wire [{nr - 1}:0] l{i}_ov; wire [{nr * rw - 1}:0] l{i}_orow; wire [{nr * qw - 1}:0] l{i}_oq;")
        v(f"  assign fb{i}_release = l{i}_end; assign fb{j}_commit = l{i}_end;")
        v(f"  mixq_window #(.IH({h}), .IW({w}), .PW({c * s.in_bits}), .KH({kh}), .KW({kw}), .SH({s.stride[0]}), "
          f".SW({s.stride[1]}), .PH({s.padding[0]}), .PL({s.padding[1]}), .OH({s.out_hw[0]}), .OW({s.out_hw[1]}), "
          f".FOLD({rtl.in_words}), .LW({lw}), .AW({_bits(h * w)}), .IA({ia})) l{i}_win "
          f"(.clk(clk), .rst(rst), .can_read(fb{i}_can_read), .can_write(fb{j}_can_write), .done(l{i}_done), "
          f".frame_end(l{i}_end), .raddr(fb{i}_raddr), .rdata(fb{i}_rdata), .in_we(l{i}_we), .in_addr(l{i}_addr), "
          f".in_data(l{i}_data), .start(l{i}_start), .ready(l{i}_ready));")
        load = ", .wl_we(1'b0), .wl_sel(0), .wl_addr(0), .wl_data(0)" if rtl.load_port else ""
        v(f"  {rtl.top} l{i}_eng (.clk(clk), .rst(rst), .in_we(l{i}_we), .in_addr(l{i}_addr), .in_data(l{i}_data), "
          f".start(l{i}_start), .busy(), .ready(l{i}_ready), .out_valid(l{i}_ov), .out_row(l{i}_orow), "
          f".out_q(l{i}_oq){load});")
        v(f"  mixq_collect #(.NR({nr}), .RW({rw}), .QW({qw}), .ROWS({oc}), .OB({s.out_bits}), "
          f".SIGNED({int(s.out_signed)}), .OH({s.out_hw[0]}), .OW({s.out_hw[1]}), .PK({s.pool}), .PHO({oh}), "
          f".PWO({ow}), .AW({_bits(oh * ow)})) l{i}_col (.clk(clk), .rst(rst), .ov(l{i}_ov), .orow(l{i}_orow), "
          f".oq(l{i}_oq), .we(fb{j}_we), .waddr(fb{j}_waddr), .wdata(fb{j}_wdata), .done(l{i}_done));")
    n = len(stages)
    oc, oh, ow = sl.out_shape
    v(f"  mixq_axis_out #(.ROWS({oc}), .OB({sl.out_bits}), .DW({net.out_width}), .NPIX({oh * ow}), "
      f".AW({_bits(oh * ow)})) axis_out (.clk(clk), .rst(rst), .can_read(fb{n}_can_read), "
      f".release_(fb{n}_release), .raddr(fb{n}_raddr), .rdata(fb{n}_rdata), .m_tdata(m_axis_tdata), "
      ".m_tvalid(m_axis_tvalid), .m_tlast(m_axis_tlast), .m_tready(m_axis_tready));")
    v("endmodule")
    net.files[f"{top}.v"] = "\n".join(lines) + "\n"
    return net


def input_words(net: NetworkRtl, codes: np.ndarray) -> list[int]:
    """The input stream's beats for ``codes`` (N, C, H, W) (or (N, F)): one pixel word per beat, raster order."""
    s0 = net.stages[0]
    c, h, w = s0.in_shape
    x = np.asarray(codes, dtype=np.int64).reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, c)
    mask = (1 << s0.in_bits) - 1
    sh = np.arange(c, dtype=object) * s0.in_bits
    return [int(sum((int(v) & mask) << int(p) for v, p in zip(px, sh, strict=True))) for px in x]


def output_order(net: NetworkRtl, out: np.ndarray) -> np.ndarray:
    """The engine's output (N, C, H, W) or (N, C) in the output stream's order: (N, H*W*C), pixel-major."""
    c, h, w = net.stages[-1].out_shape
    return np.asarray(out, dtype=np.int64).reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, h * w * c)
