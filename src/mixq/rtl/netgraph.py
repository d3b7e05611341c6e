"""The dataflow graph of a whole-network accelerator (:mod:`mixq.rtl.network`): what runs where.

:func:`lower_graph` walks an :class:`~mixq.engine.model.IntModel` in topological order and groups its
nodes into *stages*:

* a **layer stage** (:class:`Stage`) for every conv / linear node: its layer engine (dense or depthwise)
  with the clamps, the max-pool and the requantizer that follow it while it is the only consumer (the
  value it writes is that requant's codes); a layer whose output feeds more than one node, an add, or the
  network output writes its **accumulators** instead (the identity requantizer, ``head``), exactly the
  engine's value of the conv node;
* a **pointwise stage** (:class:`PointStage`) for a residual add, a requant, a clamp, a concat, a lookup
  table (Hardswish, SiLU, Sigmoid ...), an unfolded BatchNorm (``affine``), a product (of two maps of one
  shape, or by a constant) or a reduction over the channels, whose input is such a value: per channel, the
  engine's integer rules one after the other (``add``: ``(a*Ma + b*Mb + 2**(n-1)) >> n``; ``clamp``;
  ``requant``: ``clamp((x*M + 2**(n-1)) >> n, qmin, qmax)``; ``lut``: ``table[x - qmin]``; ``affine``:
  ``((x*M_c + 2**(n_c-1)) >> n_c) + B_c``; ``reduce``: ``(R_c(x_c*M_c) + 2**(n-1)) >> n``) on a pixel at a
  time;
* a **gather stage** (:class:`GatherStage`) for what takes an output pixel from other input pixels: pad, zero
  insertion, pixel shuffle and nearest upsampling (moves), a max-pool on codes, and the exact window sums of an
  average pool and a bilinear interpolation (weighted taps), one input pixel read a cycle.

Every value a stage writes goes to one buffer per stage that reads it (:class:`Buffer`; the network
output's buffer feeds the output stream), so a skip connection is a second buffer the producer writes
beside the main path's: a ring of rows where its reader reads rows in order, else whole frames (two banks, more
where frames wait longer): :mod:`mixq.rtl.frames` decides which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mixq.engine.model import IntModel, IntNode, quantizer_behind
from mixq.errors import ModelError
from mixq.hw.window import copy_cycles, first_reads, frame_cycles, later_reads, pixel_cycles, streams, window_plan
from mixq.rtl.layer import output_latency
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
    head: bool  # outputs its accumulators, no requantization (the network output, or a value an add takes)
    source: str = ""  # the value the stage reads (a buffer's)
    value: str = ""  # the value the stage writes (the requant after it, or the layer's own accumulators)
    dilation: tuple[int, int] = (1, 1)  # window taps ky * dh, kx * dw apart

    @property
    def span(self) -> tuple[int, int]:
        """Input rows and columns one window covers: ``(k - 1) * dilation + 1``."""
        return ((self.kernel[0] - 1) * self.dilation[0] + 1, (self.kernel[1] - 1) * self.dilation[1] + 1)

    @property
    def run_cycles(self) -> int:
        """Cycles the engine computes per input vector (``tiles * fold``)."""
        return self.layout.tiles * self.layout.fold

    @property
    def window_reads(self) -> int:
        """Frame-buffer reads of an output row's first window (``kh * kw``, one per cycle; ``kw`` with the rows read
        in parallel)."""
        return int(first_reads(self.kernel, self.rows))

    @property
    def window_design(self) -> tuple[int, int]:
        """``(RS, RP)`` of ``mixq_window``: the columns a gathered window keeps from the one to its left (0: none) and
        the rows it reads a cycle (1 or ``kh``), where they make the layer faster
        (:func:`mixq.hw.window.window_plan`)."""
        if self.streamed or self.layout.data.op != "conv":
            return 0, 1
        rs, rp = window_plan(self.kernel, self.stride, self.dilation, self.out_hw[1], self.run_cycles,
                             self.copy_words, self.layout.fold, False)
        return int(rs), int(rp)

    @property
    def reuse(self) -> int:
        """Columns a gathered window keeps (``RS``; :attr:`window_design`)."""
        return self.window_design[0]

    @property
    def rows(self) -> int:
        """Rows a gathered window reads a cycle (``RP``: its buffer's read ports; :attr:`window_design`)."""
        return self.window_design[1]

    @property
    def copy_lanes(self) -> int:
        """Words the window sequencer writes into the engine per cycle: one per dot unit for a depthwise layer
        (each unit reads a word of its own channel every cycle), else one."""
        d = self.layout.data
        if d.op == "conv" and d.groups > 1:
            return max(1, sum(c.units for c in self.layout.cores))
        return 1

    @property
    def copy_words(self) -> int:
        """Cycles the window sequencer copies into the engine per vector: ``fold`` words (a depthwise layer:
        one chunk per channel, ``channels * fold`` words, ``copy_lanes`` of them a cycle)."""
        d = self.layout.data
        return int(copy_cycles(d.groups if d.op == "conv" else 1, self.layout.fold, self.copy_lanes))

    @property
    def streamed(self) -> bool:
        """Whether the window goes straight from the frame buffer into the engine (``mixq_window_stream``): a
        dense layer whose pixel word is a whole number of engine words (``simd`` divides the channels)."""
        d = self.layout.data
        return self.in_bits == self.layout.abits and bool(streams(self.in_shape[0], self.layout.simd,
                                                                  d.op == "conv" and d.groups > 1))

    @property
    def pixel_cycles(self) -> int:
        """Cycles per output pixel of this design after a row's first (:func:`mixq.hw.window.pixel_cycles`): the
        engine's vectors back to back (copy overlapped), or the window reads or the copy if slower (at least 3: a
        window's data come two cycles after its last read); a streamed window: the engine, or the window's
        ``fold`` words and one cycle (the engine takes it with its last word, the next window's reads start then)."""
        return int(pixel_cycles(self.run_cycles, later_reads(self.kernel, self.reuse, self.rows), self.copy_words,
                                self.layout.fold, self.streamed))

    @property
    def frame_overhead(self) -> int:
        """Cycles per frame besides the pixels: the first window (reads, data, copy; streamed: the reads are the
        copy) before the engine starts,
        the last vector's way through the engine (:func:`mixq.rtl.layer.output_latency`) and the collector, and
        the frame handshake, less one pixel interval (the last pixel's is counted in the drain)."""
        fill = self.copy_words + 3 + (0 if self.streamed else self.window_reads)
        return fill + output_latency(self.layout) + 5 - self.pixel_cycles

    @property
    def cycles(self) -> int:
        """Cycles per frame of this stage: its pixels at :attr:`pixel_cycles` and :attr:`frame_overhead`."""
        return int(frame_cycles(self.out_hw, self.kernel, self.reuse, self.run_cycles, self.copy_words,
                                self.layout.fold, self.streamed, self.rows)) + self.frame_overhead



def _consumers(model: IntModel) -> dict[str, list[IntNode]]:
    out: dict[str, list[IntNode]] = {}
    for n in model.nodes:
        for i in n.inputs:
            out.setdefault(i, []).append(n)
    return out


def _chw(shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    raise ModelError(f"network: {where} has shape {shape}; the network builder takes (C, H, W) or (F,) maps")


def _unit_dims_only(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether a reshape from ``a`` to ``b`` only inserts or removes unit dims (``view(-1, C, 1, 1)``)."""
    return [d for d in a if d != 1] == [d for d in b if d != 1]


def _unflattened(model: IntModel, values: Mapping[str, torch.Tensor]) -> tuple[IntModel, dict[str, torch.Tensor]]:
    """The model without its flatten nodes and its reshapes of unit dims (a requant after one works per channel on
    the unflattened map), so
    :func:`mixq.rtl.layerdata.layer_data` sees ``conv -> clamp -> maxpool -> requant``; values to match."""
    vals = dict(values)
    shapes: dict[str, tuple[int, ...]] = {}
    drop: dict[str, str] = {}  # flatten -> its input
    nodes: list[IntNode] = []
    for n in model.nodes:
        if n.op == "flatten" or (n.op == "reshape" and _unit_dims_only(model.node(n.inputs[0]).shape, n.shape)):
            drop[n.name] = drop.get(n.inputs[0], n.inputs[0])
            vals.pop(n.name, None)
            continue
        if not any(i in drop for i in n.inputs):
            nodes.append(n)
            continue
        if len(n.inputs) > 1:  # a product / add / concat of a reshaped map: its own shape, the map as it was
            nodes.append(dataclasses.replace(n, inputs=tuple(drop.get(i, i) for i in n.inputs)))
            continue
        src = drop[n.inputs[0]]
        shape = shapes.get(src, model.node(src).shape)
        if n.op in ("slice", "gather") and len(n.shape) == 1:  # of the channels of a one-pixel map: its own count
            shape = (int(n.shape[0]), *shape[1:])
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
        formats=tuple(dict(f) for f in a["formats"]), in_fmt=dict(quantizer_behind(src, model.node).attrs["fmt"]),
        out_fmt={"kind": "fixed", "bits": signed_width([-bound, bound]), "signed": True},
        stride=tuple(a.get("stride", (1, 1))), padding=tuple(a.get("padding", (0, 0))),  # type: ignore[arg-type]
        groups=int(a.get("groups", 1)), dilation=tuple(int(v) for v in a.get("dilation", (1, 1))),  # type: ignore[arg-type]
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



@dataclass(frozen=True)
class PointOp:
    """One per-channel rule of a pointwise stage (lists hold one entry per channel)."""

    op: str  # "add" | "clamp" | "requant" | "cat" | "lut" | "affine" | "mul" | "reduce"
    m: tuple[tuple[int, ...], ...] = ()  # add: the multiplier of each input; requant, affine, reduce: (M,);
    n: tuple[int, ...] = ()              # lut: (table,), n: (offset,); mul: ((sign,),) or () for two tensors
    lo: tuple[int, ...] | None = None  # clamp limits (requant: qmin, qmax)
    hi: tuple[int, ...] | None = None
    b: tuple[int, ...] = ()  # affine: the offset B per channel
    fn: str = ""  # reduce: "sum" | "max"


@dataclass(frozen=True)
class PointStage:
    """Per-channel arithmetic on whole pixels: a residual add (two inputs) and / or clamps and a requant."""

    name: str
    sources: tuple[str, ...]  # the values read, one buffer each (an add's operands in its order)
    value: str  # the value written: the last op's node
    ops: tuple[PointOp, ...]  # the rules of pixel class 0
    shape: tuple[int, int, int]
    out_bits: int
    out_signed: bool
    variants: tuple[tuple[PointOp, ...], ...] = ()  # the rules per pixel class (more than one where a grid
    pixel_class: tuple[int, ...] = ()  # varies in space: after a pixel shuffle), and each pixel's class

    @property
    def cycles(self) -> int:
        """Cycles per frame: one pixel a cycle after a two-cycle read latency, and the frame handshake."""
        return self.shape[1] * self.shape[2] + 6


@dataclass(frozen=True)
class GatherStage:
    """Output pixels gathered from one input buffer: output pixel ``p`` reads the input pixels ``addr[p]``
    (one per tap; -1: none) and takes, per output channel, an input channel of its one tap (``move``: pad, zero
    insertion, pixel shuffle, nearest upsampling; channel map ``maps[phase[p]]``, -1 = a zero) or the maximum
    over its taps (``max``: a max-pool on codes that no layer stage took in) or their weighted sum (``sum``:
    ``weights[p][tap] * x``, exact; an average pool's window sum, weights 1, or a bilinear interpolation's
    ``wh[y] * ww[x]``)."""

    name: str
    source: str
    value: str
    op: str  # "move" | "max" | "sum"
    addr: tuple[tuple[int, ...], ...]
    phase: tuple[int, ...]
    maps: tuple[tuple[int, ...], ...]
    shape: tuple[int, int, int]  # output (C, H, W)
    in_shape: tuple[int, int, int]
    out_bits: int
    out_signed: bool
    weights: tuple[tuple[int, ...], ...] = ()  # sum: per output pixel, per tap
    shift: int = 0  # sum: each tap's code rounded half up by this many bits first (a pool of a wide product)

    @property
    def taps(self) -> int:
        return len(self.addr[0]) if self.addr else 1

    @property
    def cycles(self) -> int:
        """Cycles per frame: one input pixel read a cycle, every tap of every output pixel, and the handshake."""
        return self.shape[1] * self.shape[2] * self.taps + 6


#: engine ops a gather stage runs: the data movements (what the engine's kernel does to an index map; a transpose
#: or reshape only where every output pixel reads one input pixel, e.g. H and W swapped, or a channel shuffle),
#: channel and spatial slices, channel gathers and zeros, max-pool, and the window sums of average pooling and
#: bilinear interpolation
GATHER_OPS = ("pad", "zero_insert", "pixel_shuffle", "upsample", "transpose", "reshape", "slice", "gather", "zeros",
              "maxpool", "sumpool", "interp")
#: moves whose output may be a shape no buffer holds (a channel shuffle's (g, C/g, H, W)): a chain of them up to a
#: (C, H, W) or (F,) value is one gather stage
CHAIN_MOVES = ("reshape", "transpose")


def _windows(oh: int, ow: int, h: int, w: int, k: tuple[int, ...], st: tuple[int, ...], pad: tuple[int, ...],
             dil: tuple[int, ...] = (1, 1)) -> tuple[tuple[int, ...], ...]:
    """Per output pixel, the input pixel of each window tap (-1 on the padding)."""
    addr = []
    for oy in range(oh):
        for ox in range(ow):
            taps = []
            for ky in range(k[0]):
                for kx in range(k[1]):
                    iy, ix = oy * st[0] - pad[0] + ky * dil[0], ox * st[1] - pad[1] + kx * dil[1]
                    taps.append(iy * w + ix if 0 <= iy < h and 0 <= ix < w else -1)
            addr.append(tuple(taps))
    return tuple(addr)


def _sum_gather(node: IntNode, in_shape: tuple[int, int, int], signed: bool) -> GatherStage:
    """An average pool's window sums or a bilinear interpolation's ``wh @ x @ ww^T`` as weighted taps."""
    c, h, w = in_shape
    oc, oh, ow = _chw(node.shape, node.name)
    if node.op == "sumpool":
        a = node.attrs
        k, st, pad = (tuple(int(v) for v in a[x]) for x in ("kernel", "stride", "padding"))
        addr = _windows(oh, ow, h, w, k, st, pad)
        weights = tuple((1,) * len(t) for t in addr)
    else:
        wh, ww = (np.asarray(node.arrays[x], dtype=np.int64) for x in ("wh", "ww"))
        taps = [[(int(iy * w + ix), int(wh[oy, iy] * ww[ox, ix])) for iy in np.flatnonzero(wh[oy])
                 for ix in np.flatnonzero(ww[ox])] for oy in range(oh) for ox in range(ow)]
        n = max(len(t) for t in taps)
        addr = tuple(tuple(a for a, _ in t) + (-1,) * (n - len(t)) for t in taps)
        weights = tuple(tuple(v for _, v in t) + (0,) * (n - len(t)) for t in taps)
    bound = int(node.bound)
    bits = signed_width([-bound, bound]) if signed else max(1, bound.bit_length())
    return GatherStage(node.name, node.inputs[0], node.name, "sum", addr, (0,) * (oh * ow), (tuple(range(c)),),
                       (oc, oh, ow), in_shape, bits, signed, weights, int(node.attrs.get("shift", 0)))


def _gather(node: IntNode, in_shape: tuple[int, int, int], bits: int, signed: bool,
            chain: tuple[IntNode, ...] = ()) -> GatherStage:
    """The gather of ``node``: a move derived by running the engine's own kernel on an index map (so it is
    the engine's data movement exactly; ``chain``: the moves from the stage's input up to ``node``, run in
    turn), or a max-pool's windows from its attributes."""
    from mixq.engine.runner import KERNELS

    c, h, w = in_shape
    oc, oh, ow = _chw(node.shape, node.name)
    if node.op in ("sumpool", "interp"):
        return _sum_gather(node, in_shape, signed)
    if node.op == "maxpool":
        k, st, pad, dil = (tuple(int(v) for v in node.attrs[x]) for x in ("kernel", "stride", "padding", "dilation"))
        return GatherStage(node.name, node.inputs[0], node.name, "max", _windows(oh, ow, h, w, k, st, pad, dil),
                           (0,) * (oh * ow), (tuple(range(c)),), (oc, oh, ow), in_shape, bits, signed)
    idx = torch.arange(1, c * h * w + 1, dtype=torch.int64).reshape(1, c, h, w)
    for n in chain or (node,):
        idx = KERNELS[n.op](n, {n.inputs[0]: c * h * w}, "shift_add")([idx], {})
    out = idx.reshape(oc, oh * ow).numpy()
    maps: dict[tuple[int, ...], int] = {}
    addr, phase = [], []
    for q in range(oh * ow):
        col = out[:, q]
        src = {int(v - 1) % (h * w) for v in col if v}
        if len(src) > 1:
            raise ModelError(f"network: {node.name!r} ({node.op}) takes one output pixel from several input pixels; "
                             "the gather unit reads one")
        m = tuple(int(v - 1) // (h * w) if v else -1 for v in col)
        addr.append((src.pop() if src else -1,))
        phase.append(maps.setdefault(m, len(maps)))
    return GatherStage(node.name, (chain or (node,))[0].inputs[0], node.name, "move", tuple(addr), tuple(phase),
                       tuple(maps), (oc, oh, ow), in_shape, bits, signed)


@dataclass(frozen=True)
class Buffer:
    """A frame buffer: ``value`` written by stage ``producer`` (-1: the input stream), read by stage
    ``consumer`` (-1: the output stream)."""

    value: str
    producer: int
    consumer: int
    shape: tuple[int, int, int]
    bits: int
    signed: bool


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Stage | PointStage | GatherStage, ...]  # in topological order
    buffers: tuple[Buffer, ...]

    @property
    def stages(self) -> list[Stage]:
        return [s for s in self.nodes if isinstance(s, Stage)]

    def inputs_of(self, i: int) -> list[int]:
        """Buffer indices stage ``i`` reads, in its sources' order."""
        node = self.nodes[i]
        srcs = node.sources if isinstance(node, PointStage) else (node.source,)
        out = []
        for v in srcs:
            out.append(next(k for k, b in enumerate(self.buffers) if b.value == v and b.consumer == i))
        return out

    def outputs_of(self, i: int) -> list[int]:
        return [k for k, b in enumerate(self.buffers) if b.producer == i]


def _spatial(a: object, shape: tuple[int, int, int]) -> np.ndarray:
    """A constant of a node (scalar, (C,), (C, 1, 1), (C, H, W) ...) as a (C, H*W) int64 array."""
    c, h, w = shape
    v = np.asarray(a, dtype=np.int64)
    if v.size == 1:
        return np.full((c, h * w), int(v.reshape(-1)[0]), dtype=np.int64)
    if v.size == c:
        return np.repeat(v.reshape(c, 1), h * w, axis=1)
    return np.broadcast_to(v.reshape(c, h, w), (c, h, w)).reshape(c, h * w)


def _constants(node: IntNode, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """The (C, H*W) constants of a pointwise node, in the order :func:`_point_op` reads them."""
    a = node.arrays
    if node.op == "add":
        m = np.asarray(a["M"])
        return [*(_spatial(m[k], shape) for k in range(m.shape[0])), _spatial(a["n"], shape)]
    if node.op == "clamp":
        return [_spatial(a[k], shape) for k in ("lo", "hi") if a.get(k) is not None]
    if node.op == "requant":
        return [_spatial(a["M"], shape), _spatial(a["n"], shape)]
    return []


def _point_op(node: IntNode, shape: tuple[int, int, int], shapes: Mapping[str, tuple[int, ...]],
              pix: int) -> PointOp:
    """The rule of ``node`` at output pixel ``pix`` (its constants as the pixel sees them per channel)."""
    c = shape[0]
    k = [tuple(int(x) for x in arr[:, pix]) for arr in _constants(node, shape)]
    if node.op == "add":
        return PointOp("add", tuple(k[:-1]), k[-1])
    if node.op == "cat":  # output channel c: (input, its channel)
        return PointOp("cat", m=tuple((i, j) for i, src in enumerate(node.inputs) for j in range(_chw(
            shapes[src], src)[0])))
    a = node.arrays
    if node.op == "lut":
        return PointOp("lut", (tuple(int(v) for v in np.asarray(a["table"]).reshape(-1)),),
                       (int(node.attrs["in_qmin"]),))
    if node.op in ("affine", "reduce"):
        size = np.asarray(a["M"]).size

        def per(x: object) -> tuple[int, ...]:
            return tuple(int(v) for v in np.broadcast_to(np.asarray(x, dtype=np.int64).reshape(-1), (size,)))

        if node.op == "reduce":
            return PointOp("reduce", (per(a["M"]),), per(a["n"]), fn=str(node.attrs["fn"]))
        return PointOp("affine", (per(a["M"]),), per(a["n"]), b=per(a["B"]))
    if node.op == "mul":  # by a constant's sign, or two maps (each rounded by its shift first)
        if node.attrs.get("const") is not None:
            return PointOp("mul", ((int(node.attrs["sign"]),),))
        return PointOp("mul", n=tuple(int(k) for k in node.attrs.get("shifts", (0, 0))))
    if node.op == "clamp":
        lo = k.pop(0) if a.get("lo") is not None else None
        return PointOp("clamp", lo=lo, hi=k.pop(0) if a.get("hi") is not None else None)
    return PointOp("requant", (k[0],), k[1], (int(node.attrs["qmin"]),) * c, (int(node.attrs["qmax"]),) * c)


#: engine ops a pointwise stage runs (one output pixel from the same pixel of its inputs), and those that may
#: follow in the same stage (one input each)
POINT_OPS = ("add", "clamp", "requant", "cat", "lut", "affine", "mul", "reduce")
CHAIN_OPS = ("clamp", "requant", "lut", "affine", "mul")


def _check_point(node: IntNode, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """One :class:`ModelError` for a pointwise node the stage cannot run as it is."""
    if node.op == "mul" and node.attrs.get("const") is None:
        a, b = (_chw(shapes[i], i) for i in node.inputs)
        if not (a[0] == b[0] or 1 in (a[0], b[0])) or not (a[1:] == b[1:] or (1, 1) in (a[1:], b[1:])):
            raise ModelError(f"network: {node.name!r} (mul) multiplies maps of shapes {a} and {b}; the pointwise "
                             "stage broadcasts a one-channel map over the channels or a one-pixel map over the "
                             "pixels")
    if node.op == "reduce" and (int(node.attrs.get("dim", 1)) != 1 or not node.attrs.get("keepdim")):
        raise ModelError(f"network: {node.name!r} (reduce) reduces dim {node.attrs.get('dim')} with keepdim "
                         f"{node.attrs.get('keepdim')}; the pointwise stage reduces the channels, keepdim=True")


def _variants(chain: list[IntNode], shape: tuple[int, int, int], shapes: Mapping[str, tuple[int, ...]]) -> tuple[
        tuple[tuple[PointOp, ...], ...], tuple[int, ...]]:
    """The chain's rules per class of pixels that see the same constants (one class, unless a grid varies in
    space, as after a pixel shuffle), and each pixel's class."""
    cols = [arr for n in chain for arr in _constants(n, shape)]
    if cols:
        _, first, cls = np.unique(np.concatenate(cols, axis=0).T, axis=0, return_index=True, return_inverse=True)
    else:
        first, cls = np.zeros(1, dtype=np.int64), np.zeros(shape[1] * shape[2], dtype=np.int64)
    order = np.argsort(first)  # classes in the order of their first pixel
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    variants = tuple(tuple(_point_op(n, shape, shapes, int(first[j])) for n in chain) for j in order)
    return variants, tuple(int(rank[x]) for x in np.asarray(cls).reshape(-1))


def lower_graph(model: IntModel, values: Mapping[str, torch.Tensor],
                folding: Mapping[str, tuple[int, int]] | None = None, core: str = "auto",
                part: str = "xc7z020") -> Graph:
    """The stages and frame buffers of ``model`` (``values``: the engine's integers for a batch,
    ``keep=True``) at ``folding`` (layer -> (pe, simd); missing layers: :func:`default_folding`). One
    :class:`ModelError` naming the node for anything the network builder does not take."""
    fold = {**default_folding(model), **dict(folding or {})}
    first = [n for n in model.nodes if n.inputs == ("input",)]
    if len(first) != 1 or first[0].op != "quantize":
        raise ModelError("network: the model's input must feed one quantizer (the codes the input stream carries)")
    flat, vals = _unflattened(model, values)
    cons = _consumers(flat)
    # value -> (producer index, shape, bits, signed)
    made: dict[str, tuple[int, tuple[int, int, int], int, bool]] = {
        first[0].name: (-1, _chw(first[0].shape, first[0].name), int(first[0].attrs["fmt"].get("bits", 8)),
                        bool(first[0].attrs["fmt"].get("signed")))}
    nodes: list[Stage | PointStage | GatherStage] = []
    shapes = {n.name: n.shape for n in flat.nodes}
    done = {first[0].name}
    for node in flat.nodes:
        if node.name in done:
            continue
        for i in node.inputs:
            if i not in made:
                raise ModelError(f"network: {node.name!r} ({node.op}) reads {i!r}, which no stage writes (the network "
                                 "builder takes conv / linear, clamps, max-pool, requant, flatten and residual adds)")
        if node.op in ("conv", "linear"):
            st = _layer_stage(flat, vals, cons, node, made[node.inputs[0]], fold, core, part)
            done.update(_chain(cons, node) if not st.head else ())
            nodes.append(st)
            made[st.value] = (len(nodes) - 1, st.out_shape, st.out_bits, st.out_signed)
        elif node.op in GATHER_OPS:
            _, in_shape, bits, signed = made[node.inputs[0]]
            chain = [node]
            while chain[-1].op in CHAIN_MOVES and len(chain[-1].shape) not in (1, 3):
                nxt = cons.get(chain[-1].name, [])
                if len(nxt) != 1 or nxt[0].op not in CHAIN_MOVES:
                    raise ModelError(f"network: {chain[-1].name!r} ({chain[-1].op}) makes a map of shape "
                                     f"{tuple(chain[-1].shape)}; the network builder takes (C, H, W) or (F,) maps, "
                                     "or reshapes and transposes back to one")
                chain.append(nxt[0])
            gs = _gather(chain[-1], in_shape, bits, signed, tuple(chain))
            nodes.append(gs)
            done.update(n.name for n in chain)
            made[gs.value] = (len(nodes) - 1, gs.shape, gs.out_bits, gs.out_signed)
        elif node.op in POINT_OPS:
            _check_point(node, shapes)
            chain = [node]
            while chain[-1].op != "requant" and len(cons.get(chain[-1].name, [])) == 1 and \
                    cons[chain[-1].name][0].op in CHAIN_OPS and chain[-1].name != flat.output and \
                    len(cons[chain[-1].name][0].inputs) == 1:
                chain.append(cons[chain[-1].name][0])
                _check_point(chain[-1], shapes)
            c, h, w = _chw(node.shape, node.name)
            last = chain[-1]
            if last.op == "requant":
                bits, signed = int(last.attrs["fmt"].get("bits", 8)), bool(last.attrs["fmt"].get("signed"))
            else:
                bits, signed = signed_width([-int(last.bound), int(last.bound)]), True
            if node.op == "cat":  # codes as they are: the widest input's width, signed if any input is
                ins = [made[i] for i in node.inputs]
                bits = max(b + (1 if sg != any(x[3] for x in ins) else 0) for _, _, b, sg in ins)
                signed = any(x[3] for x in ins)
                chain = [node]
                last = node
            variants, classes = _variants(chain, (c, h, w), shapes)
            nodes.append(PointStage(node.name, tuple(node.inputs), last.name, variants[0], (c, h, w), bits, signed,
                                    variants, classes))
            done.update(n.name for n in chain)
            made[last.name] = (len(nodes) - 1, (c, h, w), bits, signed)
        else:
            raise ModelError(f"network: {node.name!r} ({node.op}) is not supported by the network builder (conv / "
                             "linear, " + ", ".join((*POINT_OPS, *GATHER_OPS)) + ", flatten)")
    if flat.output not in made:
        raise ModelError(f"network: the output {flat.output!r} is inside a stage; it must be a stage's value")
    reads = [(v, i) for i, node_ in enumerate(nodes)
             for v in (node_.sources if isinstance(node_, PointStage) else (node_.source,))]
    buffers = [Buffer(v, made[v][0], i, *made[v][1:]) for v, i in [*reads, (flat.output, -1)]]
    order = sorted(buffers, key=lambda b: (b.producer, b.consumer if b.consumer >= 0 else len(nodes)))
    return Graph(tuple(nodes), tuple(order))


def _chain(cons: dict[str, list[IntNode]], node: IntNode) -> list[str]:
    """The clamps, max-pool and requant a layer stage takes in (one chain of single consumers)."""
    out = []
    cur = node
    while True:
        cur = cons[cur.name][0]
        out.append(cur.name)
        if cur.op == "requant":
            return out


def _takes_chain(cons: dict[str, list[IntNode]], node: IntNode, output: str) -> bool:
    """Whether ``node`` runs into a requant through clamps / one max-pool, each the only consumer."""
    cur = node
    while True:
        nxt = cons.get(cur.name, [])
        if len(nxt) != 1 or cur.name == output:
            return False
        cur = nxt[0]
        if cur.op == "requant":
            return True
        if cur.op not in ("clamp", "maxpool") or (cur.op == "maxpool" and not _collector_pool(cur)):
            return False


def _collector_pool(node: IntNode) -> bool:
    """Whether a max-pool is one the layer stage's collector runs (k x k, stride k, no padding, no dilation);
    any other runs as a gather stage on the layer's accumulators."""
    a = node.attrs
    k = tuple(a["kernel"])
    return (k[0] == k[1] and tuple(a["stride"]) == k and tuple(a["padding"]) == (0, 0)
            and tuple(a["dilation"]) == (1, 1) and not a["ceil_mode"])


def _layer_stage(flat: IntModel, vals: Mapping[str, torch.Tensor], cons: dict[str, list[IntNode]], node: IntNode,
                 src: tuple[int, tuple[int, int, int], int, bool], fold: Mapping[str, tuple[int, int]], core: str,
                 part: str) -> Stage:
    _, in_shape, in_bits, _ = src
    a = node.attrs
    if node.op == "conv":
        dil = (int(a.get("dilation", (1, 1))[0]), int(a.get("dilation", (1, 1))[1]))
        kh, kw = (int(v) for v in node.arrays["weight"].shape[2:])
        kernel, stride = (kh, kw), (int(a["stride"][0]), int(a["stride"][1]))
        padding = (int(a["padding"][0]), int(a["padding"][1]))
        out_hw = (int(node.shape[1]), int(node.shape[2]))
    else:  # a window over the whole input map, one output pixel
        kernel, stride, padding, out_hw = (in_shape[1], in_shape[2]), (1, 1), (0, 0), (1, 1)
        dil = (1, 1)
    head = not _takes_chain(cons, node, flat.output)
    pool = 1
    value = node.name
    if head:
        d = _head_data(flat, vals, node)
    else:
        d = layer_data(flat, dict(vals), node.name)
        tail = node
        while tail.op != "requant":
            tail = cons[tail.name][0]
            if tail.op == "maxpool":
                ta = tail.attrs
                k = tuple(ta["kernel"])
                if pool != 1:
                    raise ModelError(f"network: {tail.name!r} is a second max-pool after {node.name!r}")
                pool = int(k[0])
        value = tail.name
    pe, simd = fold.get(node.name, (1, 1))
    lay = _permuted(plan_layout(d, pe, simd, core, part), in_shape)
    rows = d.rows
    if head:
        out_shape = (rows, out_hw[0], out_hw[1])
        out_bits, out_signed = signed_width([int(v) for v in d.lo] + [int(v) for v in d.hi]), True
    else:
        out_shape = (rows, out_hw[0] // pool, out_hw[1] // pool)
        fmt = flat.node(value).attrs["fmt"]
        out_bits, out_signed = int(fmt.get("bits", 8)), bool(fmt.get("signed"))
    return Stage(node.name, lay, in_shape, in_bits, kernel, stride, padding, out_hw, pool, out_shape, out_bits,
                 out_signed, head, node.inputs[0], value, dil)


def lower_network(model: IntModel, values: Mapping[str, torch.Tensor],
                  folding: Mapping[str, tuple[int, int]] | None = None, core: str = "auto",
                  part: str = "xc7z020") -> list[Stage]:
    """The layer stages of ``model`` (:func:`lower_graph`) when it is one chain of layers (CNV's shape)."""
    g = lower_graph(model, values, folding, core, part)
    if len(g.stages) != len(g.nodes) or len(g.buffers) != len(g.nodes) + 1:
        raise ModelError("network: the model is not one chain of layers (see lower_graph)")
    return g.stages
