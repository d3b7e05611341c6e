"""Streaming-dataflow engines: the cycles and resources of one layer's engine at a folding.

A compute engine (FINN's MVAU / VVAU) has ``pe`` rows x ``simd`` lanes: each cycle it
takes ``simd`` activations and produces partial sums for ``pe`` output rows, so one
output pixel takes ``ceil(rows / pe) * ceil(row_length / simd)`` cycles. Rows in two
formats (MSQ) split the PEs in proportion to their rows: the LUT PEs and the DSP PEs
of one engine work side by side and the slower group sets the cycles.

Resources = PEs (:mod:`mixq.hw.cost`) + requantizers (one per PE, shared over the
``ceil(row_length / simd)`` cycles each output takes) + weight memories (one per PE,
``simd * wbits`` wide; block RAM, UltraRAM or LUTRAM, whichever takes the smallest
share of the part) + the sliding-window line buffer of a k x k convolution +
control. Stream operators (residual add, pooling) get as many lanes as they need
to keep up with the slowest compute engine.

``ArchOptions(dataflow="finn")`` prices an engine as FINN builds it instead (weights in
one decoupled weight streamer placed by Vivado, a threshold unit per PE and none on the
network's output layer, a sliding-window generator, the stream FIFOs the options name):
see :mod:`mixq.hw.dataflow`.

Assumed constants (not calibrated; stated in the estimate's notes):
``ArchOptions.engine_lut`` / ``engine_ff`` of control per engine (address counters,
stream handshakes), ``shell_lut`` / ``shell_ff`` per part (DMA and AXI shell).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from mixq.errors import HardwareError
from mixq.hw import dataflow as df
from mixq.hw.cost import CostModel, Resources
from mixq.hw.kinds import MULTIPLY_KINDS, PE_KINDS, REQUANT_KINDS, STREAM_OPS, shares_act
from mixq.hw.lower import HwLayer, RowGroup
from mixq.hw.memory import choose_memory
from mixq.hw.parts import Part
from mixq.hw.pe import PeConfig

DATAFLOWS = ("mixq", "finn")


@dataclass(frozen=True)
class ArchOptions:
    """Knobs of the architecture templates (defaults are typical; every one is reported)."""

    util_cap: float = 0.85  # usable share of LUTs and FFs (routing headroom)
    mem_cap: float = 0.95  # usable share of block RAM / UltraRAM; DSPs: all
    requant: str = "dyadic"  # "dyadic" (M * 2^-n on a DSP) or "thresh" (FINN thresholds, LUTs)
    mem_style: str = "auto"  # weights: "auto" | "vivado" | "lutram" | "bram" | "uram"
    engine_lut: float = 150.0
    engine_ff: float = 200.0
    shell_lut: float = 2500.0
    shell_ff: float = 3500.0
    link_gbps: float = 10.0  # multi-FPGA: link bandwidth between consecutive parts, Gb/s
    ddr_efficiency: float = 0.8  # overlay: sustained share of the board's DDR bandwidth
    overlay_simd: int = 16  # overlay: lanes per PE of the LUT and DSP cores
    overlay_buffer_share: float = 0.6  # overlay: share of block RAM for tile buffers
    overlay_layer_cycles: int = 1000  # overlay: per-layer set-up / pipeline fill
    requant_share: int = 4  # overlay: rows per requantizer
    ddr_weights: str = "never"  # streaming: "auto" moves the weights of layers that do not fit to DDR
    dma_lut: float = 800.0  # streaming: AXI read master per layer with DDR weights
    dma_ff: float = 1200.0
    dataflow: str = "mixq"  # streaming engines as mixq's RTL builds them, or "finn" (mixq.hw.dataflow)
    fifos: tuple[tuple[str, int], ...] = ()  # "finn": (layer, depth) — a stream FIFO in front of a layer

    def __post_init__(self) -> None:
        if self.dataflow not in DATAFLOWS:
            raise HardwareError(f"dataflow: {self.dataflow!r} is not one of {', '.join(DATAFLOWS)}")
        if self.requant not in REQUANT_KINDS:
            raise HardwareError(f"requant: {self.requant!r} is not one of {', '.join(REQUANT_KINDS)}")
        if self.ddr_weights not in ("never", "auto"):
            raise HardwareError(f"ddr_weights: {self.ddr_weights!r} is not one of never, auto")
        for f in ("util_cap", "mem_cap"):
            if not 0 < getattr(self, f) <= 1:
                raise HardwareError(f"{f}: must be in (0, 1], got {getattr(self, f)}")
        for f in ("link_gbps", "ddr_efficiency"):
            v = getattr(self, f)
            if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise HardwareError(f"{f}: must be a finite number > 0, got {v!r}")


def requant_kind(opts: ArchOptions) -> str:
    """The PE kind of the requantizer: ``requant`` (dyadic, DSP) or ``thresh`` (LUTs)."""
    return REQUANT_KINDS[opts.requant]


def budget(part: Part, opts: ArchOptions) -> Resources:
    """What one part offers a design (the usable share of each resource)."""
    c, m = opts.util_cap, opts.mem_cap
    return Resources(lut=part.lut * c, ff=part.ff * c, dsp=float(part.dsp), bram=part.bram * m,
                     uram=part.uram * m)


def shell(opts: ArchOptions) -> Resources:
    return Resources(lut=opts.shell_lut, ff=opts.shell_ff)


@dataclass(frozen=True)
class EngineCost:
    """One engine at one folding."""

    cycles: int
    resources: Resources
    pe: int
    simd: int
    pe_split: tuple[int, ...] = ()
    detail: dict[str, Resources] = field(default_factory=dict, compare=False)


def split_rows(rows: int, groups: tuple[RowGroup, ...]) -> list[int]:
    """Rows of each group (fractions rounded so they sum to ``rows``)."""
    out: list[int] = []
    acc = 0.0
    for g in groups:
        acc += g.fraction
        out.append(round(acc * rows) - sum(out))
    return out


def split_pe(pe: int, rows: list[int]) -> list[int]:
    """PEs of each group: the split of ``pe`` (at least one per group with rows) that minimises the
    slowest group's ``ceil(rows / pe)``; spare PEs go to the largest groups. Adding a PE never makes
    the slowest group slower.

    >>> split_pe(8, [32, 32]), split_pe(5, [10, 54]), split_pe(1, [3, 5])
    ([4, 4], [1, 4], [1, 1])
    """
    live = [i for i, r in enumerate(rows) if r > 0]
    out = [0] * len(rows)
    if not live:
        return out
    if len(live) == 1:
        out[live[0]] = min(max(pe, 1), rows[live[0]])
        return out
    pe = max(pe, len(live))
    lo, hi = 1, max(rows[i] for i in live)  # the smallest per-PE row count c the PEs can reach
    while lo < hi:
        c = (lo + hi) // 2
        if sum(math.ceil(rows[i] / c) for i in live) <= pe:
            hi = c
        else:
            lo = c + 1
    for i in live:
        out[i] = math.ceil(rows[i] / lo)
    spare = pe - sum(out)
    for i in sorted(live, key=lambda i: -rows[i]):
        add = min(spare, rows[i] - out[i])
        out[i] += add
        spare -= add
    return out


def _mem(width: int, depth: int, copies: int, part: Part, model: CostModel, style: str) -> Resources:
    pc, mc = model.lutram_coefs()
    return _mem_cached(width, depth, copies, part, style, pc, mc)


@lru_cache(maxsize=65536)
def _mem_cached(width: int, depth: int, copies: int, part: Part, style: str, pc: float, mc: float) -> Resources:
    m = choose_memory(width, depth, part, style, pc, mc, copies)
    return Resources(lut=m.lut, bram=float(m.bram), uram=float(m.uram))


def _requant(n: int, accw: int, out_bits: int, part: Part, model: CostModel, opts: ArchOptions) -> Resources:
    if n <= 0:
        return Resources()
    kind = requant_kind(opts)
    cfg = PeConfig(kind, accw=accw, out_bits=max(1, out_bits))
    res = model.pe(cfg, part.dsp_type) * n
    if PE_KINDS[kind].table_memory:  # thresholds live in a small memory per requantizer
        res = res + _mem(accw, 2 ** out_bits - 1, n, part, model, "auto")
    return res


def _thresholds(layer: HwLayer, pe: int, accw: int, part: Part, model: CostModel) -> Resources:
    """FINN's threshold units: one per PE with ``2**out_bits - 1`` thresholds per channel it serves;
    none on a layer whose output leaves the network (``noActivation``: it streams its accumulators)."""
    if not layer.spec.outputs or pe <= 0:
        return Resources()
    bits = max(1, layer.out_bits)
    comparators = model.pe(PeConfig("thresh", accw=accw, out_bits=bits), part.dsp_type) * pe
    return comparators + df.threshold_memory(pe, layer.spec.weight_rows, 2 ** bits - 1, accw, part, model)


def weight_bits(layer: HwLayer) -> int:
    """Bits of a compute layer's weights."""
    s = layer.spec
    rows = split_rows(s.weight_rows, layer.groups)
    return sum(r * s.row_length * g.wbits for g, r in zip(layer.groups, rows, strict=True))


def ddr_bits(layer: HwLayer) -> int:
    """DDR traffic per frame of a layer whose weights stream from DDR: the whole matrix per output pixel
    (a dataflow engine sees one pixel's window at a time and cannot keep the weights)."""
    return weight_bits(layer) * max(layer.spec.out_pixels, 1)


def line_buffer_bits(layer: HwLayer) -> int:
    """Bits of the sliding-window buffer of a k x k operator: (kh - 1) rows plus kw pixels."""
    s = layer.spec
    if len(s.in_shape) != 3 or (s.kernel[0] <= 1 and s.kernel[1] <= 1):
        return 0
    c, _, w = s.in_shape
    return ((s.kernel[0] - 1) * w + s.kernel[1]) * c * layer.abits


def engine_cycles(layer: HwLayer, pe: int, simd: int) -> int:
    """Cycles per frame of :func:`compute_engine` at ``pe`` x ``simd`` (without costing it)."""
    s = layer.spec
    length, pix = max(s.row_length, 1), max(s.out_pixels, 1)
    fold_in = math.ceil(length / max(1, min(simd, length)))
    grows = split_rows(s.weight_rows, layer.groups)
    cycles = 0
    for g, r, p in zip(layer.groups, grows, split_pe(max(pe, 1), grows), strict=True):
        if r > 0:
            rows_per_unit = PE_KINDS[g.kind].rows
            eff = rows_per_unit * math.ceil(p / rows_per_unit)
            cycles = max(cycles, math.ceil(r / eff) * fold_in * pix)
    return cycles


def compute_engine(layer: HwLayer, pe: int, simd: int, part: Part, model: CostModel,
                   opts: ArchOptions, external: bool = False) -> EngineCost:
    """Cycles per frame and resources of a conv / dwconv / linear engine with ``pe`` x ``simd``.

    ``external``: the weights stream from DDR (a 32-deep FIFO per engine and a DMA read master
    instead of the weight memories); they are read once per output pixel, see :func:`ddr_bits`.
    With ``opts.dataflow == "finn"`` the weights are one decoupled streamer (Vivado's placement unless
    ``mem_style`` says otherwise), ``requant`` is a threshold unit per PE (none when the layer's output
    leaves the network), ``linebuf`` the sliding-window generator, and ``inbuf`` / ``fifo`` add the
    input-vector buffer and the FIFOs ``opts.fifos`` puts in front of the layer (:mod:`mixq.hw.dataflow`).
    """
    s = layer.spec
    rows, length, pix = s.weight_rows, max(s.row_length, 1), max(s.out_pixels, 1)
    simd = max(1, min(simd, length))
    fold_in = math.ceil(length / simd)
    grows = split_rows(rows, layer.groups)
    gpe = split_pe(max(pe, 1), grows)
    cycles, eff_total, accw = 0, 0, 0
    comp, wmem = Resources(), Resources()
    finn = opts.dataflow == "finn"
    stream_width = stream_depth = 0
    eff_split = []
    for g, r, p in zip(layer.groups, grows, gpe, strict=True):
        if r <= 0:
            eff_split.append(0)
            continue
        rows_per_unit = PE_KINDS[g.kind].rows  # a packed DSP unit computes two rows
        units = math.ceil(p / rows_per_unit)
        eff = rows_per_unit * units
        eff_split.append(eff)
        eff_total += eff
        cycles = max(cycles, math.ceil(r / eff) * fold_in * pix)
        unit, acc_bits = model.dot(g.kind, g.wbits, g.abits, simd, length, g.signed_act, part.dsp_type)
        accw = max(accw, acc_bits)
        comp = comp + unit * units
        width = simd * g.wbits * rows_per_unit
        if external:
            wmem = wmem + _mem(width * units, 32, 1, part, model, "lutram")
        elif finn:  # one streamer for the engine: every unit's word side by side
            stream_width += width * units
            stream_depth = max(stream_depth, math.ceil(r / eff) * fold_in)
        else:
            wmem = wmem + _mem(width, math.ceil(r / eff) * fold_in, units, part, model, opts.mem_style)
    in_width = simd * layer.abits * (1 if shares_act(s.kind) else eff_total)  # depthwise: a channel per PE
    if finn:
        style = "vivado" if opts.mem_style == "auto" else opts.mem_style
        if not external:
            wmem = df.weight_streamer(stream_width, stream_depth, part, model, style)
        req = _thresholds(layer, eff_total, accw, part, model)
        lbuf = df.sliding_window(s.in_shape, s.kernel, s.stride, simd, layer.abits, part, model)
    else:
        req = _requant(math.ceil(eff_total / fold_in), accw, layer.out_bits, part, model, opts)
        lb_bits = line_buffer_bits(layer)
        lbuf = _mem(in_width, math.ceil(lb_bits / in_width), 1, part, model, "auto") if lb_bits else Resources()
    ctrl = Resources(lut=opts.engine_lut, ff=opts.engine_ff)
    if external:
        ctrl = ctrl + Resources(lut=opts.dma_lut, ff=opts.dma_ff)
    detail = {"compute": comp, "requant": req, "weights": wmem, "linebuf": lbuf, "control": ctrl}
    if finn:
        detail["inbuf"] = df.input_buffer(length, simd, layer.abits) * (1 if shares_act(s.kind) else eff_total)
        detail["fifo"] = df.fifos(tuple(d for n, d in opts.fifos if n == s.name), in_width)
    return EngineCost(cycles, Resources.total(detail.values()), pe, simd, tuple(eff_split), detail)


def stream_elements(layer: HwLayer) -> int:
    """Elements a stream operator handles per frame: its output for adds, concats and the data-movement
    ops (which write more than they read), its input otherwise (``StreamOp.elements``)."""
    op = STREAM_OPS.get(layer.spec.kind)
    shape = layer.spec.out_shape if op is not None and op.elements == "out" else layer.spec.in_shape
    return math.prod(shape) if shape else 1


def _buffer(bits: int, lanes: int, a: int, part: Part, model: CostModel) -> Resources:
    """A memory of ``bits`` read ``lanes * a`` bits wide (none for zero bits)."""
    return _mem(lanes * a, math.ceil(bits / (lanes * a)), 1, part, model, "auto") if bits else Resources()


_Price = tuple[Resources, Resources]  # (compute, buffers)


def _price_reduce(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
    """A comparator / adder tree over all the channels of one pixel per lane."""
    s = layer.spec
    chans = s.in_shape[0] if s.in_shape else 1
    return model.pe(PeConfig("tree", abits=a, simd=max(2, chans)), part.dsp_type) * lanes, Resources()


def _price_product(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
    """One fixed-point multiplier of the two operands per lane (a DSP, or LUTs on a part without DSPs)."""
    kind = MULTIPLY_KINDS["dsp" if part.dsp > 0 else "lut"]
    return model.pe(PeConfig(kind, a, a, 1, acc_len=1, signed_act=True), part.dsp_type) * lanes, Resources()


def _price_add(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
    """An adder per lane and the skip FIFO."""
    comp = model.pe(PeConfig("tree", abits=a + 1, simd=2), part.dsp_type) * lanes
    return comp, _buffer(layer.fifo_bits, lanes, a, part, model)


def _price_maxpool(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
    """A comparator tree over the window and a line buffer."""
    s = layer.spec
    n = max(2, s.kernel[0] * s.kernel[1])
    comp = model.pe(PeConfig("tree", abits=a, simd=n), part.dsp_type) * lanes
    return comp, _buffer(line_buffer_bits(layer), lanes, a, part, model)


def _price_concat(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
    """A select per lane and the skip FIFO."""
    return Resources(lut=lanes * a), _buffer(layer.fifo_bits, lanes, a, part, model)


def _price_act(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
    """A ``2**abits``-entry ROM per lane (a clamp, e.g. Hardtanh, is folded into the requantizer)."""
    lut = layer.spec.extra.get("node_kind", "lut") == "lut"
    extra = _mem(max(layer.out_bits, 1), 2 ** min(a, 16), lanes, part, model, "auto") if lut else Resources()
    return Resources(), extra


def _pricer_move(interpolates: bool) -> Callable[[HwLayer, int, int, Part, CostModel], _Price]:
    def price(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
        """A buffer of one input row (all channels) the output rows are read from; bilinear upsampling
        adds a 4-input adder tree per lane."""
        s = layer.spec
        bilinear = interpolates and s.extra.get("mode") == "bilinear"
        comp = (model.pe(PeConfig("tree", abits=a + 4, simd=4), part.dsp_type) * lanes if bilinear
                else Resources(lut=lanes * a))
        row = (s.in_shape[0] * s.in_shape[-1] * a) if len(s.in_shape) == 3 else 0
        return comp, _buffer(row, lanes, a, part, model)
    return price


def _window(layer: HwLayer) -> int:
    s = layer.spec
    return s.kernel[0] * s.kernel[1]


def _whole_map(layer: HwLayer) -> int:
    s = layer.spec
    return math.prod(s.in_shape[1:]) if len(s.in_shape) == 3 else 1


def _pricer_pool(window: Callable[[HwLayer], int]) -> Callable[[HwLayer, int, int, Part, CostModel], _Price]:
    def price(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
        """An accumulator per lane over the window, then a shift / requantization."""
        s = layer.spec
        accw = a + max(1, math.ceil(math.log2(max(window(layer), 2))))
        comp = model.pe(PeConfig("acc", abits=a, accw=accw), part.dsp_type) * lanes
        chans = s.in_shape[0] if s.in_shape else 1
        return comp, _mem(lanes * accw, math.ceil(chans / lanes), 1, part, model, "auto")
    return price


# stream operator kind (mixq.hw.kinds.STREAM_OPS) -> its compute and buffers at ``lanes`` lanes
STREAM_PRICES: dict[str, Callable[[HwLayer, int, int, Part, CostModel], _Price]] = {
    "add": _price_add, "concat": _price_concat, "maxpool": _price_maxpool,
    "avgpool": _pricer_pool(_window), "gap": _pricer_pool(_whole_map), "act": _price_act,
    "upsample": _pricer_move(True), "zero_insert": _pricer_move(False), "pad": _pricer_move(False),
    "pixel_shuffle": _pricer_move(False),
    "reduce": _price_reduce, "mul": _price_product, "bn": _price_product,
}


def stream_engine(layer: HwLayer, lanes: int, part: Part, model: CostModel, opts: ArchOptions) -> EngineCost:
    """A stream operator (:data:`mixq.hw.kinds.STREAM_OPS`) with ``lanes`` elements per cycle.

    Residual add: an adder per lane and the skip FIFO; concat: the skip FIFO and a select per lane;
    max pool: a comparator tree and a line buffer; average pool / GAP: an accumulator per lane;
    lookup-table activation: a ``2**abits``-entry ROM per lane (output at the next layer's width);
    upsample / zero insertion / padding / pixel shuffle: a buffer of one input row (all channels),
    which the output rows are read from (bilinear upsampling adds a 4-input adder tree per lane);
    channel reduction (mean / max over the channels): a comparator / adder tree over all the channels of
    one pixel per lane (the mean's 1/C is in the grid; a per-channel rescale, where the channels' grids
    differ, is not priced); elementwise product (and an unfolded BatchNorm, a per-channel multiply-add):
    one fixed-point multiplier of the two operands per lane (a DSP, or LUTs on a part without DSPs).
    Reductions and products take one output element per lane and cycle."""
    s = layer.spec
    lanes = max(1, lanes)
    op = STREAM_OPS.get(s.kind)
    price = STREAM_PRICES.get(s.kind)
    if op is None or price is None:
        raise HardwareError(f"layer {s.name}: no stream engine for operator kind {s.kind!r}; "
                            f"priced: {', '.join(STREAM_PRICES)}")
    elems = math.prod(s.out_shape) if op.cycles_on_out and s.out_shape else stream_elements(layer)
    cycles = math.ceil(elems / lanes)
    comp, extra = price(layer, lanes, max(layer.abits, 1), part, model)
    ctrl = Resources(lut=opts.engine_lut, ff=opts.engine_ff)
    detail = {"compute": comp, "buffers": extra, "control": ctrl}
    return EngineCost(cycles, Resources.total(detail.values()), lanes, 1, (lanes,), detail)


def divisors(n: int) -> list[int]:
    n = max(n, 1)
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def stream_lanes(layer: HwLayer, target_cycles: float) -> int:
    """Fewest lanes (a divisor of the channels) for which the operator keeps up with ``target_cycles``."""
    chans = (layer.spec.out_shape or (1,))[0]
    elems = stream_elements(layer)
    for d in divisors(chans):
        if math.ceil(elems / d) <= target_cycles:
            return d
    return chans
