"""Streaming-dataflow engines: the cycles and resources of one layer's engine at a folding.

A compute engine (FINN's MVAU / VVAU) has ``pe`` rows x ``simd`` lanes: each cycle it
takes ``simd`` activations and produces partial sums for ``pe`` output rows, so one
output pixel takes ``ceil(rows / pe) * ceil(row_length / simd)`` cycles. Rows in two
formats (MSQ) split the PEs in proportion to their rows: the LUT PEs and the DSP PEs
of one engine work side by side and the slower group sets the cycles. mixq's RTL feeds a
conv engine from a window sequencer that reads one pixel a cycle, so an output pixel takes
at least what its window's reads and copy take (:func:`window_cycles`, the rule of
:mod:`mixq.hw.window` the RTL's own cycle model uses): a few channels on a 3 x 3 window with
fewer than 9 cycles of computing per pixel are read-bound, unless the window keeps columns or
reads its rows in parallel (a copy of its line buffer per row).

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

import itertools
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from mixq.errors import HardwareError
from mixq.hw import dataflow as df
from mixq.hw.cost import CostModel, Resources
from mixq.hw.kinds import PE_KINDS, REQUANT_KINDS, shares_act
from mixq.hw.lower import HwLayer, RowGroup
from mixq.hw.memory import choose_memory, memory_grid
from mixq.hw.parts import Part
from mixq.hw.pe import PeConfig
from mixq.hw.window import copy_cycles, frame_cycles, line_pixels, streams, window_plan

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


def layer_key(layer: HwLayer) -> tuple[Hashable, ...]:
    """Everything of a compute layer a mixq-dataflow engine's price reads (not its name or neighbours): layers
    with equal keys cost the same at every folding, so the estimate's caches share their figures."""
    s = layer.spec
    return (s.kind, s.weight_rows, s.row_length, s.out_pixels, s.in_shape, s.out_shape, s.kernel, s.stride,
            tuple(s.extra.get("dilation", (1, 1))), s.groups, layer.groups, layer.abits, layer.out_bits)


class ById:
    """A hashable stand-in for an unhashable object (a :class:`CostModel`) that a cache key names by identity. It
    holds the object weakly where it can: a key of an object that is gone equals no other key (even one whose
    object got the same ``id``) and leaves the memo in its turn."""

    __slots__ = ("_id", "_ref")

    def __init__(self, obj: object) -> None:
        self._id = id(obj)
        try:
            self._ref: Callable[[], object] = weakref.ref(obj)
        except TypeError:  # not weakly referable: held
            self._ref = lambda: obj

    def __hash__(self) -> int:
        return self._id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ById) or other._id != self._id:
            return False
        obj = self._ref()
        return obj is not None and obj is other._ref()


class Memo:
    """A bounded memo across estimates: the least recently used entry leaves first (safe across threads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[Hashable, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self.lock:
            hit = self.data.get(key)
            if hit is not None:
                self.data.move_to_end(key)
            return hit

    def put(self, key: Hashable, value: Any) -> None:
        with self.lock:
            self.data[key] = value
            if len(self.data) > self.size:
                self.data.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.data.clear()


#: every memo of layer prices across estimates (``clear_caches`` empties them)
MEMOS: list[Memo] = []


def memo(size: int) -> Memo:
    m = Memo(size)
    MEMOS.append(m)
    return m


def clear_caches() -> None:
    """Forget the layer prices kept across estimates (the figures do not change: they are recomputed)."""
    for m in MEMOS:
        m.clear()


@lru_cache(maxsize=65536)
def _split_pe(pe: int, rows: tuple[int, ...]) -> list[int]:
    return split_pe(pe, list(rows))


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
    if len(s.in_shape) != 3:
        return 0
    c, _, w = s.in_shape
    return line_pixels(s.kernel, w) * c * layer.abits


# The registers of mixq's window sequencer (:mod:`mixq.rtl.glue`) beside its counters (``control``). A dense conv
# whose window pixel (``C`` codes) is not a whole number of engine words (``simd`` does not divide ``C``) has its
# window gathered in registers (``mixq_window``): the shift register, the finished window and the copy register,
# ``K * C * A`` bits each, and a load-or-shift multiplexer per copy bit. yosys ``synth_xilinx`` of that window at
# CNV's features.10 (K = 9, C = 64, A = 6, simd 72): 10,034 FF and 3,979 LUT for 3,456 bits
# (``benchmarks/rtl_network.py --synth``). Where a pixel is several engine words (``mixq_window_stream``), the
# pixel waits in a register while its words are written: ``C * A`` flip-flops.
GATHER_FF_PER_BIT = 2.9
GATHER_LUT_PER_BIT = 1.15
# A gathered window that keeps columns (``RS`` > 0) writes each read at its tap and moves the columns with the
# window's last read: a load-or-move multiplexer per window bit and the tap decoders. yosys ``synth_xilinx`` of
# ``mixq_window`` (3 x 3, 32 x 32 map) with RS = 1 against RS = 0: +231 / +751 / +2,031 LUT for 216 / 1,152 /
# 3,456 window bits (3 / 16 / 48 channels of 8 bits), +7 to +31 FF; the line through the last two meets the
# first exactly.
REUSE_LUT_PER_BIT = 0.556
REUSE_LUT = 111.0
# A gathered window that reads its rows in parallel (``RP`` = kh) writes each column read at its taps: yosys
# ``synth_xilinx`` of ``mixq_window`` (3 x 3, stride 2, 32 x 32 map) with RP = 3 against RP = 1 (RS = 0): +204 / +618
# LUT for 216 / 1,152 window bits (3 / 16 channels of 8 bits), 4-7% fewer FF; with RS = 1 as well the two add up to
# within 7% (806 / 2,050 LUT measured).
PARALLEL_LUT_PER_BIT = 0.442
PARALLEL_LUT = 109.0


def window_registers(layer: HwLayer, simds: np.ndarray, reuse: np.ndarray, rows: np.ndarray | int = 1) -> np.ndarray:
    """``(n, 5)`` resources of a dense conv's window sequencer at each of ``simds``: the gathered window's registers
    where ``simd`` does not divide the input channels (and the column-keeping multiplexers where ``reuse`` > 0, the
    column writes where it reads ``rows`` > 1 rows a cycle);
    where it divides them more than once, the word multiplexer on the buffer's output (a 4:1 per LUT6 with the
    slice's F7/F8 muxes); none where a pixel is one engine word."""
    s = layer.spec
    out = np.zeros((len(simds), 5))
    if len(s.in_shape) != 3 or s.groups != 1 or not shares_act(s.kind):
        return out
    c = s.in_shape[0]
    pixel = c * layer.abits
    bits = s.kernel[0] * s.kernel[1] * pixel
    simds = np.maximum(simds, 1)
    gather = (c % simds) != 0
    out[gather, 0] = GATHER_LUT_PER_BIT * bits
    out[gather, 1] = GATHER_FF_PER_BIT * bits
    keeps = gather & (reuse > 0)
    out[keeps, 0] += REUSE_LUT_PER_BIT * bits + REUSE_LUT
    cols = gather & (np.asarray(rows) > 1)
    out[cols, 0] += PARALLEL_LUT_PER_BIT * bits + PARALLEL_LUT
    # a streamed window: the buffer's output holds the pixel (read enable), an R:1 word multiplexer picks the words
    words = -(-c // simds)
    stream = ~gather & (words > 1)
    out[stream, 0] = (simds * layer.abits * -(-words // 4))[stream]
    return out


def collector(rows: int, out_bits: int, lanes: np.ndarray) -> np.ndarray:
    """Resource rows ``(n, 5)`` of mixq's RTL collector (:mod:`mixq.rtl.assemble`) for ``lanes`` requantizer outputs
    per folding: a pixel's (tile, step)s as a one-hot ring, one write-group select per byte-aligned group, each lane's
    codes of the group in progress, the pixel counters. Fitted to yosys on the searched CNV design's six
    collectors (106-282 FF, 79-183 LUT); before byte-enabled buffer writes it held a whole pixel, ``rows x OB`` FF."""
    lanes = np.maximum(lanes, 1)
    events = -(-rows // lanes)
    lane_bits = lanes * out_bits
    group_bits = np.lcm(lane_bits, 8)
    groups = -(-(rows * out_bits) // group_bits)
    out = np.zeros((len(lanes), 5))
    out[:, 0] = groups + COLLECTOR_LUT
    out[:, 1] = events + groups + group_bits + COLLECTOR_FF
    return out


COLLECTOR_LUT, COLLECTOR_FF = 60.0, 40.0  # the collector's pixel counters and write address (yosys, see collector)


def engine_cycles(layer: HwLayer, pe: int, simd: int) -> int:
    """Cycles per frame of :func:`compute_engine` at ``pe`` x ``simd`` (without costing it)."""
    s = layer.spec
    length = max(s.row_length, 1)
    simd = max(1, min(simd, length))
    fold_in = math.ceil(length / simd)
    grows = split_rows(s.weight_rows, layer.groups)
    run = lanes = 0
    for g, r, p in zip(layer.groups, grows, split_pe(max(pe, 1), grows), strict=True):
        if r > 0:
            rows_per_unit = PE_KINDS[g.kind].rows
            units = math.ceil(p / rows_per_unit)
            lanes += units
            run = max(run, math.ceil(r / (rows_per_unit * units)) * fold_in)
    cycles, _, _ = window_cycles(layer, np.array([simd]), np.array([fold_in]), np.array([run]), np.array([lanes]))
    return int(cycles[0])


def window_cycles(layer: HwLayer, simds: np.ndarray, fold: np.ndarray, run: np.ndarray,
                  lanes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cycles per frame of mixq's engine at each folding, the columns its window keeps (``RS``, 0: none) and the
    rows it reads a cycle (``RP``, 1 or ``kh``): ``run`` cycles per output pixel (``tiles * fold``), or what the
    window sequencer of mixq's RTL needs where that is slower (:mod:`mixq.hw.window`: a conv's window pixels are
    read one a cycle, or a column a cycle with the rows in parallel, kept columns read only the new ones, a
    depthwise / grouped window is copied a chunk per group, ``lanes`` dot units a cycle). Not a conv (a linear
    layer, a layer without its shapes): ``run`` per output pixel."""
    s = layer.spec
    if s.kind not in ("conv", "dwconv") or len(s.in_shape) != 3 or len(s.out_shape) != 3:
        zero = np.zeros(len(simds), dtype=np.int64)
        return run * max(s.out_pixels, 1), zero, zero + 1
    streamed = np.broadcast_to(streams(s.in_shape[0], simds, s.groups > 1), simds.shape)
    copy = copy_cycles(s.groups, fold, lanes)
    dilation = tuple(s.extra.get("dilation", (1, 1)))
    out_hw = (int(s.out_shape[1]), int(s.out_shape[2]))
    reuse, rows = window_plan(s.kernel, s.stride, dilation, out_hw[1], run, copy, fold, streamed)  # type: ignore[arg-type]
    return (np.asarray(frame_cycles(out_hw, s.kernel, reuse, run, copy, fold, streamed, rows), dtype=np.int64),
            np.asarray(reuse, dtype=np.int64), np.asarray(rows, dtype=np.int64))


TERMS = ("compute", "requant", "weights", "linebuf", "control")  # the detail of a mixq-dataflow engine


def engine_grid(layer: HwLayer, pes: Sequence[int], simds: Sequence[int], part: Part, model: CostModel,
                opts: ArchOptions, external: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cycles ``(n,)``, resources ``(n, 5)`` and PE split ``(n, groups)`` of :func:`compute_engine` at every
    ``(pes[i], simds[i])``: the same numbers, bit for bit, costed in bulk (what the folding optimizer reads)."""
    if opts.dataflow != "mixq":
        engines = [compute_engine(layer, p, d, part, model, opts, external) for p, d in zip(pes, simds, strict=True)]
        return (np.array([e.cycles for e in engines], dtype=np.int64),
                np.array([e.resources for e in engines], dtype=float).reshape(len(engines), 5),
                np.array([e.pe_split for e in engines], dtype=np.int64).reshape(len(engines), -1))
    cycles, terms, split = _terms(layer, np.asarray(pes, dtype=np.int64), np.asarray(simds, dtype=np.int64), part,
                                  model, opts, external)
    total = np.zeros((len(cycles), 5))
    for t in TERMS:  # Resources.total's order of additions
        total = total + terms[t]
    return cycles, total, split


def _distinct(a: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The distinct values of the integer array ``a`` (ascending) and each element's index among them."""
    u = sorted(set(a.tolist()))
    return u, np.searchsorted(np.array(u, dtype=np.int64), a)


def _rows(items: list[Resources]) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(items), float, count=5 * len(items)).reshape(len(items), 5)


def _terms(layer: HwLayer, pes: np.ndarray, simds: np.ndarray, part: Part, model: CostModel, opts: ArchOptions,
           external: bool) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The mixq-dataflow engine at ``n`` foldings: cycles, each term of its detail ``(n, 5)``, and the
    rows each group's PEs compute at once ``(n, groups)``."""
    s = layer.spec
    rows, length = s.weight_rows, max(s.row_length, 1)
    n = len(pes)
    pc, mc = model.lutram_coefs()
    mems: dict[tuple[int, int, int, str], Resources] = {}

    def mem(width: int, depth: int, copies: int, style: str) -> Resources:
        key = (width, depth, copies, style)  # a local memo: the shared cache hashes the part on every call
        if key not in mems:
            mems[key] = _mem_cached(width, depth, copies, part, style, pc, mc)
        return mems[key]

    def memories(width: np.ndarray, depth: np.ndarray, copies: np.ndarray, style: str) -> np.ndarray:
        # a few memories one by one (choose_memory, cached; memory_grid gives the same numbers bit for bit)
        if style == "vivado" or len(width) <= 4:
            return _rows([mem(w, d, c, style) for w, d, c in zip(width.tolist(), depth.tolist(), copies.tolist(),
                                                                  strict=True)])
        return memory_grid(width, depth, copies, part, style, pc, mc)

    simds = np.minimum(np.maximum(simds, 1), length)
    fold = -(-length // simds)
    grows = split_rows(rows, layer.groups)
    # per distinct pe / simd / accumulator width once, then gathered to every folding
    upe, pe_at = _distinct(pes)
    gpe = np.array([_split_pe(max(p, 1), tuple(grows)) for p in upe], dtype=np.int64).reshape(len(upe),
                                                                                             len(grows))[pe_at]
    usimd, simd_at = _distinct(simds)
    run = np.zeros(n, dtype=np.int64)
    lanes = np.zeros(n, dtype=np.int64)
    eff_total = np.zeros(n, dtype=np.int64)
    accw = np.zeros(n, dtype=np.int64)
    eff_split = np.zeros((n, len(grows)), dtype=np.int64)
    comp, wmem = np.zeros((n, 5)), np.zeros((n, 5))
    for gi, (g, r) in enumerate(zip(layer.groups, grows, strict=True)):
        if r <= 0:
            continue
        rows_per_unit = PE_KINDS[g.kind].rows  # a packed DSP unit computes two rows
        units = -(-gpe[:, gi] // rows_per_unit)
        eff = rows_per_unit * units
        eff_split[:, gi] = eff
        eff_total += eff
        lanes += units
        depth = -(-r // eff) * fold
        run = np.maximum(run, depth)
        dots = [model.dot(g.kind, g.wbits, g.abits, d, length, g.signed_act, part.dsp_type) for d in usimd]
        comp = comp + _rows([u for u, _ in dots])[simd_at] * units[:, None]
        accw = np.maximum(accw, np.array([a for _, a in dots], dtype=np.int64)[simd_at])
        width = simds * g.wbits * rows_per_unit
        if external:
            wmem = wmem + memories(width * units, np.full(n, 32), np.ones(n, dtype=np.int64), "lutram")
        else:
            wmem = wmem + memories(width, depth, units, opts.mem_style)
    cycles, reuse, ports = window_cycles(layer, simds, fold, run, lanes)
    # requantizers: a dyadic multiplier (or a threshold table) per accumulator width, times their number
    count = -(-eff_total // fold)
    kind, ob = requant_kind(opts), max(1, layer.out_bits)
    uacc, acc_at = _distinct(accw)
    req = _rows([model.pe(PeConfig(kind, accw=a, out_bits=ob), part.dsp_type) for a in uacc])[acc_at] * count[:, None]
    if PE_KINDS[kind].table_memory:  # thresholds live in a small memory per requantizer
        req = req + memories(accw, np.full(n, 2 ** layer.out_bits - 1), count, "auto")
    req[count <= 0] = 0.0
    lb_bits = line_buffer_bits(layer)
    share = shares_act(s.kind)
    lbuf = np.zeros((n, 5))
    if lb_bits:
        widths = simds * layer.abits * (1 if share else eff_total)
        # a window reading its rows in parallel reads a copy of the buffer per row (``RP`` read ports)
        lbuf = memories(widths, np.ceil(lb_bits / widths).astype(np.int64), ports, "auto")
    lbuf = lbuf + window_registers(layer, simds, reuse, ports)
    ctrl = Resources(lut=opts.engine_lut, ff=opts.engine_ff)
    if external:
        ctrl = ctrl + Resources(lut=opts.dma_lut, ff=opts.dma_ff)
    control = np.broadcast_to(np.array(ctrl, dtype=float), (n, 5)) + collector(rows, ob, count)
    terms = {"compute": comp, "requant": req, "weights": wmem, "linebuf": lbuf, "control": control}
    return cycles, terms, eff_split


_ENGINES = memo(8192)  # compute_engine's mixq-dataflow engines, by layer description and folding


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
    if opts.dataflow == "mixq":  # the bulk costing at one folding, kept for layers of the same description
        simd = max(1, min(simd, max(layer.spec.row_length, 1)))
        key = (layer_key(layer), pe, simd, part, ById(model), opts, external)
        hit = _ENGINES.get(key)
        if hit is None:
            cyc, terms, split = _terms(layer, np.array([pe]), np.array([simd]), part, model, opts, external)
            detail = {t: Resources(*(float(v) for v in terms[t][0])) for t in TERMS}
            hit = EngineCost(int(cyc[0]), Resources.total(detail.values()), pe, simd,
                             tuple(int(e) for e in split[0]), detail)
            _ENGINES.put(key, hit)
        return EngineCost(hit.cycles, hit.resources, pe, simd, hit.pe_split, dict(hit.detail))
    # FINN's dataflow (the only other one), one folding at a time
    s = layer.spec
    rows, length, pix = s.weight_rows, max(s.row_length, 1), max(s.out_pixels, 1)
    simd = max(1, min(simd, length))
    fold_in = math.ceil(length / simd)
    grows = split_rows(rows, layer.groups)
    gpe = split_pe(max(pe, 1), grows)
    cycles, eff_total, accw = 0, 0, 0
    comp, wmem = Resources(), Resources()
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
        else:  # one streamer for the engine: every unit's word side by side
            stream_width += width * units
            stream_depth = max(stream_depth, math.ceil(r / eff) * fold_in)
    in_width = simd * layer.abits * (1 if shares_act(s.kind) else eff_total)  # depthwise: a channel per PE
    if not external:
        wmem = df.weight_streamer(stream_width, stream_depth, part, model,
                                  "vivado" if opts.mem_style == "auto" else opts.mem_style)
    ctrl = Resources(lut=opts.engine_lut, ff=opts.engine_ff)
    if external:
        ctrl = ctrl + Resources(lut=opts.dma_lut, ff=opts.dma_ff)
    detail = {"compute": comp, "requant": _thresholds(layer, eff_total, accw, part, model), "weights": wmem,
              "linebuf": df.sliding_window(s.in_shape, s.kernel, s.stride, simd, layer.abits, part, model),
              "control": ctrl,
              "inbuf": df.input_buffer(length, simd, layer.abits) * (1 if shares_act(s.kind) else eff_total),
              "fifo": df.fifos(tuple(d for n, d in opts.fifos if n == s.name), in_width)}
    return EngineCost(cycles, Resources.total(detail.values()), pe, simd, tuple(eff_split), detail)


def divisors(n: int) -> list[int]:
    return list(_divisors(max(n, 1)))


@lru_cache(maxsize=4096)
def _divisors(n: int) -> tuple[int, ...]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))
