"""Stream operators of the streaming dataflow: the cycles and resources of the engine of each operator
between compute layers (residual add and concat with the skip FIFO, pooling, lookup-table activations,
the data-movement ops, channel reductions, elementwise products), as a table of prices
(:data:`STREAM_PRICES`, one per kind of :data:`mixq.hw.kinds.STREAM_OPS`), and the lanes an operator
needs to keep pace with the slowest compute engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from mixq.errors import HardwareError
from mixq.graph.spec import reorders
from mixq.hw.cost import CostModel, Resources
from mixq.hw.kinds import MULTIPLY_KINDS, STREAM_OPS
from mixq.hw.lower import HwLayer
from mixq.hw.parts import Part
from mixq.hw.pe import PeConfig
from mixq.hw.units import ArchOptions, EngineCost, _mem, divisors, line_buffer_bits


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


def _price_transpose(layer: HwLayer, lanes: int, a: int, part: Part, model: CostModel) -> _Price:
    """An axis permutation. The stream is pixel-major (a pixel's channels together), so one that keeps the two
    spatial axes last and in place (a channel shuffle's (g, C / g, H, W) -> (C / g, g, H, W)) reorders within a pixel:
    a double buffer of one pixel's channels. Any other (time before channels, H and W swapped) leaves in another
    order than it comes: a double buffer of the whole tensor. Nothing where only size-1 axes move."""
    s = layer.spec
    shape = s.in_shape
    perm = [int(p) for p in s.extra.get("perm", range(len(shape)))]
    within_pixel = len(shape) >= 4 and perm[-2:] == [len(shape) - 2, len(shape) - 1]
    held = math.prod(shape[:-2]) if within_pixel else math.prod(shape)
    bits = 2 * held * a if reorders(perm, shape) else 0
    return Resources(), _buffer(bits, lanes, a, part, model)


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
    "pixel_shuffle": _pricer_move(False), "transpose": _price_transpose,
    "reduce": _price_reduce, "mul": _price_product, "bn": _price_product,
}


def stream_engine(layer: HwLayer, lanes: int, part: Part, model: CostModel, opts: ArchOptions) -> EngineCost:
    """A stream operator (:data:`mixq.hw.kinds.STREAM_OPS`) with ``lanes`` elements per cycle.

    Residual add: an adder per lane and the skip FIFO; concat: the skip FIFO and a select per lane;
    max pool: a comparator tree and a line buffer; average pool / GAP: an accumulator per lane;
    lookup-table activation: a ``2**abits``-entry ROM per lane (output at the next layer's width);
    upsample / zero insertion / padding / pixel shuffle: a buffer of one input row (all channels),
    which the output rows are read from (bilinear upsampling adds a 4-input adder tree per lane);
    axis permutation: a double buffer of one pixel's channels where the spatial axes stay (a channel shuffle), of
    the whole tensor otherwise (none where only size-1 axes move);
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


def stream_lanes(layer: HwLayer, target_cycles: float) -> int:
    """Fewest lanes (a divisor of the channels) for which the operator keeps up with ``target_cycles``."""
    chans = (layer.spec.out_shape or (1,))[0]
    elems = stream_elements(layer)
    for d in divisors(chans):
        if math.ceil(elems / d) <= target_cycles:
            return d
    return chans
