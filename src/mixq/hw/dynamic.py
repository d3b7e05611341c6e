"""Hardware that skips the channels dynamic pruning (FBS) suppresses: cycles and DDR traffic per frame on the
overlay and the single engine, as a distribution over a dataset (no torch: per-image channel counts come in
as plain data).

**Overlay** (:mod:`mixq.hw.overlay`). The layer-sequential overlay runs every layer as a GEMM whose rows
are output channels and whose row length is ``in_channels * kh * kw``; its weights come from DDR layer
by layer. An FBS layer with ``a_in`` active input and ``a_out`` computed output channels for an image is
priced as the same conv with ``a_in`` / ``a_out`` channels (:func:`~mixq.hw.overlay.layer_time`: compute
``ceil(a_out * pixels / rows_parallel) * ceil(a_in * kh * kw / simd)`` cycles + set-up, DDR traffic of
only the ``a_out x a_in`` weight slices and of the active input / output maps, the roofline of the two).
The cores are sized once for the dense network (the hardware does not change per image; the predictors
do not take part in the sizing, see :func:`_dense_cores`). The saliency predictor of each FBS layer
(``Linear(C_in -> C_out)`` on the pooled input, always dense) is priced as a linear layer on the same cores,
issued with its gated layer (no set-up cycles of its own); its global pooling is a running sum in the
producer's requantizer path (as the overlay fuses pooling) and costs no cycles. Static layers are priced
dense. The result for a dataset is the distribution of the frame time: mean and 95th percentile of cycles
and seconds.

The overlay gains about the executed-MAC reduction: both the output-channel (rows) and the input-channel
(row length) factors shrink its GEMMs, and the weight reads shrink with them. Where they differ: per-layer
set-up cycles, the predictors and the dense linear layers do not shrink, ``ceil`` on ``simd`` /
``rows_parallel`` rounds the shrunken GEMMs up, and memory-bound layers gain by traffic, not by MACs. (The
linear layer after the last gated conv is priced dense, as its executed MACs are counted: its input columns
of suppressed channels are zero, and skipping their weight reads would save traffic the model does not claim.)

**Single engine** (:mod:`mixq.hw.mnisc`, :func:`dynamic_mnisc`). The EU runs the network as a program of
steps, each reading its inputs and weights from DDR and writing its outputs back. A gated step computes only
its ``a_out`` rows over its ``a_in`` active input channels (:func:`gated_step`: cycles
``ceil(a_out / p) * ceil(a_in * kh * kw / s)`` per pixel, as for the overlay's GEMM) and moves only what they
need through DDR: the active input channels, the computed output channels (a suppressed channel is never
written; the next step does not read it) and the ``a_out x a_in`` weight slices with the kept rows'
constants. Its predictor is a step of its own before it (``Linear(C_in -> C_out)``, dense, with its own
set-up cycles; the pooled input is summed in the producer's output pipeline). The EU is sized for the dense
program and does not change per image. The gain tracks the executed MACs except where a step is bound by
DDR (then by traffic) and by the per-step set-up, the predictors and the dense steps.

**Streaming** (:func:`streaming_gain`) gains far less, for three reasons. (1) Its throughput is its
slowest stage's initiation interval, and every stage was folded for the dense layer; a stage's engine
can skip only suppressed *output* channels (a neuron fold of ``ceil(a_out / PE)`` instead of
``C_out / PE``). (2) Its input arrives as a channel-interleaved stream through the sliding-window
generator, which moves every input channel whether suppressed or not, so the *input*-channel factor
of the MAC saving is lost: cycles scale like ``d``, not ``d**2``. (3) Its weights are on chip, so skipping
their reads saves no DDR traffic, and the fabric sized for the dense network stays allocated. A frame's
interval is set by its slowest stage, so the gain is at most ``C_out / ceil(a_out / PE) / PE`` of the
bottleneck layer — at density 0.7 about 1.4x where the overlay gains about 2x.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mixq.errors import HardwareError
from mixq.graph.spec import LayerSpec
from mixq.hw.cost import CostModel, Resources
from mixq.hw.lower import HwLayer, lower
from mixq.hw.mnisc import CONST_BITS_PER_ROW, EuConfig, EuStep, step_times
from mixq.hw.overlay import Core, LayerTime, core_key, layer_time, size_cores
from mixq.hw.parts import Part, get_part
from mixq.hw.units import ArchOptions
from mixq.plan import QuantPlan

#: per FBS layer (the dense layer's name), per image: (active input channels, computed output channels)
Counts = Mapping[str, Sequence[tuple[int, int]]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between order statistics (numpy's default).

    >>> percentile([1, 2, 3, 4, 5], 95)
    4.8
    """
    v = sorted(values)
    if not v:
        raise HardwareError("percentile of an empty sequence")
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def dense_names(plan: QuantPlan) -> QuantPlan:
    """An FBS model's plan named as the dense model's layers: ``<layer>.conv`` -> ``<layer>`` (predictors kept)."""
    return replace(plan, layers={k.removesuffix(".conv"): v for k, v in plan.items()}, meta=dict(plan.meta))


def predictor_spec(spec: LayerSpec) -> LayerSpec:
    """The saliency predictor of a gated conv as a linear layer ``<name>.predictor`` (C_in -> C_out)."""
    return LayerSpec(f"{spec.name}.predictor", "linear", (spec.in_channels,), (spec.out_channels,),
                     spec.in_channels, spec.out_channels, bias=True, params=(spec.in_channels + 1) * spec.out_channels,
                     macs=spec.in_channels * spec.out_channels)


def gated_spec(spec: LayerSpec, a_in: int, a_out: int) -> LayerSpec:
    """``spec`` computing only ``a_out`` of its output channels over ``a_in`` of its input channels. A grouped
    conv (depthwise: groups == channels) computes whole groups: ``a_out / (C_out / groups)`` of them, each over
    its own inputs (MACs ``macs * a_out / C_out``)."""
    ci, co = max(spec.in_channels, 1), max(spec.out_channels, 1)
    if spec.groups > 1:
        groups = a_out // max(co // spec.groups, 1)
        return dataclasses.replace(spec, in_channels=groups * (ci // spec.groups), out_channels=a_out,
                                   groups=max(groups, 1), in_shape=(a_in, *spec.in_shape[1:]),
                                   out_shape=(a_out, *spec.out_shape[1:]), macs=spec.macs * a_out // co)
    return dataclasses.replace(spec, in_channels=a_in, out_channels=a_out,
                               in_shape=(a_in, *spec.in_shape[1:]), out_shape=(a_out, *spec.out_shape[1:]),
                               macs=spec.macs * a_in * a_out // (ci * co))


@dataclass(frozen=True)
class DynamicEstimate:
    """Frame time of a dynamically pruned network over a dataset on one template."""

    part: str
    arch: str
    frames: int
    dense_cycles: int
    dense_seconds: float
    cycles: tuple[int, ...]
    seconds: tuple[float, ...]
    weight_bits: tuple[int, ...]
    dense_weight_bits: int
    layers: dict[str, dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """Mean / p95 cycles and frame rates (``fps_p95``: the rate 95% of frames reach), the dense design's."""
        mean_s = sum(self.seconds) / self.frames
        return {
            "part": self.part, "arch": self.arch, "frames": self.frames,
            "cycles_mean": sum(self.cycles) / self.frames, "cycles_p95": percentile(self.cycles, 95),
            "fps_mean": 1.0 / mean_s, "fps_p95": 1.0 / percentile(self.seconds, 95),
            "dense_cycles": self.dense_cycles, "dense_fps": 1.0 / self.dense_seconds,
            "cycle_reduction": self.dense_cycles / (sum(self.cycles) / self.frames),
            "weight_bits_mean": sum(self.weight_bits) / self.frames, "dense_weight_bits": self.dense_weight_bits,
            "layers": self.layers,
        }


def _weight_bits(ly: HwLayer) -> int:
    return sum(round(g.fraction * ly.spec.weight_rows) * ly.spec.row_length * g.wbits for g in ly.groups)


def _check_counts(convs: Mapping[str, tuple[int, int]], counts: Counts) -> int:
    """The number of images ``counts`` covers, checked against ``convs`` (conv layer -> input, output channels);
    a HardwareError naming the layer for counts of anything else or outside its channels, or none at all."""
    frames = {len(v) for v in counts.values()}
    if len(frames) > 1:
        raise HardwareError(f"dynamic: the layers' counts cover different numbers of images: {sorted(frames)}")
    for n, rows in counts.items():
        if n not in convs:
            raise HardwareError(f"dynamic: counts for {n!r}, which is not a conv layer of the network")
        ci, co = convs[n]
        for a_in, a_out in rows:
            if not (0 <= a_in <= ci and 0 <= a_out <= co):
                raise HardwareError(f"dynamic: layer {n!r}: counts ({a_in}, {a_out}) outside its "
                                    f"{ci} x {co} channels")
    images = frames.pop() if frames else 0
    if images == 0:
        raise HardwareError("dynamic: no images in the counts")
    return images


#: one layer's price for one image: (cycles, seconds, weight bits read)
Cost = tuple[int, float, int]
#: the price of layer ``i`` computing ``(a_in, a_out)`` channels
Gated = Callable[[int, int, int], Cost]


def _distribution(part: str, arch: str, names: Sequence[str], counts: Counts, frames: int,
                  dense: Sequence[Cost], gated: Gated, extra: Collection[str]) -> DynamicEstimate:
    """Sum each image's layer costs (``gated(i, a_in, a_out)`` for a counted layer ``names[i]``, else
    ``dense[i]``) into the frame-time distribution; the dense design is the layers not in ``extra`` (the
    predictors) at their dense cost."""
    cycles: list[int] = []
    seconds: list[float] = []
    wbits: list[int] = []
    per_layer = {n: [0.0, 0.0] for n in names}
    for f in range(frames):
        c, sec, w = 0, 0.0, 0
        for i, n in enumerate(names):
            rows = counts.get(n)
            t = gated(i, *rows[f]) if rows is not None else dense[i]
            c, sec, w = c + t[0], sec + t[1], w + t[2]
            per_layer[n][0] += t[0]
            per_layer[n][1] += t[1]
        cycles.append(c)
        seconds.append(sec)
        wbits.append(w)
    table = {n: {"dense_cycles": d[0], "cycles_mean": per_layer[n][0] / frames, "dense_seconds": d[1],
                 "seconds_mean": per_layer[n][1] / frames} for n, d in zip(names, dense, strict=True)}
    base = [d for n, d in zip(names, dense, strict=True) if n not in extra]
    return DynamicEstimate(part, arch, frames, sum(d[0] for d in base), sum(d[1] for d in base), tuple(cycles),
                           tuple(seconds), tuple(wbits), sum(d[2] for d in base), table)


def _dense_cores(layers: list[HwLayer], pred: set[str], p: Part, cm: CostModel,
                 opts: ArchOptions) -> tuple[dict[str, Core], Resources]:
    """The overlay's cores sized for the dense network alone — the predictors run on them; sized with the
    predictors only where a predictor needs a core the dense network has none of. Sizing with them would
    let a predictor change the design: its short rows (``C_in``) may pack two rows per DSP where no conv
    can, and "packed where any layer packs" (:func:`mixq.hw.overlay.size_cores`) would then make the whole
    DSP core packed, with fewer rows per cycle for every conv on this part."""
    base = [ly for ly in layers if ly.name not in pred]
    cores, fixed = size_cores(base, p, cm, opts)
    need = {core_key(g.kind) for ly in layers if ly.name in pred for g in ly.groups}
    if need <= set(cores):
        return cores, fixed
    return size_cores(layers, p, cm, opts)  # pragma: no cover - a predictor format the convs do not use


@dataclass(frozen=True)
class _Pricer:
    """A network's layers on one template: their names, dense costs, the cost of layer ``i`` computing
    ``(a_in, a_out)`` channels, the predictors' names and (overlay) each layer's dense bound."""

    name: str
    names: list[str]
    dense: list[Cost]
    gated: Gated
    pred: set[str]
    bounds: dict[str, str]


def _overlay_pricer(specs: Sequence[LayerSpec], plan: QuantPlan, gated_layers: Collection[str], p: Part,
                    opts: ArchOptions, cm: CostModel) -> _Pricer:
    """The overlay's prices (:func:`dynamic_overlay`); a predictor beside each layer of ``gated_layers``."""
    names = {s.name for s in specs}
    full: list[LayerSpec] = []
    for s in specs:
        full.append(s)
        if s.name in gated_layers:
            full.append(predictor_spec(s))
    layers = lower(list(full), plan, p)
    pred = {ly.name for ly in layers if ly.name.endswith(".predictor") and ly.name not in names}
    cores, fixed = _dense_cores(layers, pred, p, cm, opts)
    buf_bits = fixed.bram * p.bram_type.bits

    def timed(ly: HwLayer) -> LayerTime:
        t = layer_time(ly, cores, p, opts, buf_bits)
        if ly.name not in pred:
            return t
        setup = opts.overlay_layer_cycles  # issued with its gated layer: no set-up of its own
        return LayerTime(t.cycles - setup, t.compute_s - setup / (p.clock_mhz * 1e6), t.memory_s, t.traffic_bits)

    @functools.cache
    def gated(i: int, a_in: int, a_out: int) -> Cost:
        ly = dataclasses.replace(layers[i], spec=gated_spec(layers[i].spec, a_in, a_out))
        t = timed(ly)
        return t.cycles, t.seconds, _weight_bits(ly)

    dense = [timed(ly) for ly in layers]
    return _Pricer(p.name, [ly.name for ly in layers],
                   [(t.cycles, t.seconds, _weight_bits(ly)) for ly, t in zip(layers, dense, strict=True)], gated,
                   pred, {ly.name: t.bound for ly, t in zip(layers, dense, strict=True)})


def _gated(counts: Collection[str], predictors: bool, with_predictor: Collection[str] | None) -> set[str]:
    return {n for n in counts if predictors and (with_predictor is None or n in with_predictor)}


def dynamic_overlay(specs: Sequence[LayerSpec], plan: QuantPlan, counts: Counts, part: str | Part = "xc7z020", *,
                    predictors: bool = True, options: ArchOptions | None = None,
                    model: CostModel | None = None, with_predictor: Collection[str] | None = None) -> DynamicEstimate:
    """The overlay's frame time for every image of ``counts`` (see the module doc); ``plan`` names layers
    as ``specs`` do, the predictors as ``<layer>.predictor`` (absent: priced W8A8, as ``lower`` does).
    ``predictors=False`` prices the counted layers without predictors (static pruning, the dense model).
    ``with_predictor``: the counted layers that have one (default: every counted layer); the others are
    layers downstream of a gated one whose active channels shrink (e.g. the depthwise and projection
    convs after a gated expansion conv: a grouped conv computes whole groups, see :func:`gated_spec`)."""
    frames = _check_counts({s.name: (s.in_channels, s.out_channels) for s in specs if s.kind in ("conv", "dwconv")},
                           counts)
    pr = _overlay_pricer(specs, plan, _gated(counts, predictors, with_predictor), get_part(part),
                         options or ArchOptions(), model or CostModel.default())
    est = _distribution(pr.name, "overlay", pr.names, counts, frames, pr.dense, pr.gated, pr.pred)
    for n, b in pr.bounds.items():
        est.layers[n]["dense_bound"] = b
    return est


def overlay_choices(specs: Sequence[LayerSpec], plan: QuantPlan, choices: Mapping[str, Sequence[tuple[int, int]]],
                    part: str | Part = "xc7z020", *, options: ArchOptions | None = None,
                    model: CostModel | None = None) -> tuple[dict[str, list[float]], float]:
    """The overlay's seconds per frame of each gated layer of ``choices`` at each of its ``(a_in, a_out)``
    options, and the seconds of everything else (the other layers dense, every gated layer's predictor) — the
    costs a frames/s budget is split over (:mod:`mixq.algorithms.prune.fbs_budget`)."""
    _check_counts({s.name: (s.in_channels, s.out_channels) for s in specs if s.kind in ("conv", "dwconv")},
                  {n: v for n, v in choices.items() if v})
    pr = _overlay_pricer(specs, plan, set(choices), get_part(part), options or ArchOptions(),
                         model or CostModel.default())
    at = {n: i for i, n in enumerate(pr.names)}
    per = {n: [pr.gated(at[n], a, b)[1] for a, b in opts] for n, opts in choices.items()}
    return per, sum(d[1] for n, d in zip(pr.names, pr.dense, strict=True) if n not in choices)


def gated_step(step: EuStep, a_in: int, a_out: int) -> EuStep:
    """A single-engine conv step computing only ``a_out`` of its output rows over ``a_in`` of its input
    channels: it reads only the active input channels, writes only the computed ones, and reads only their
    weights (the ``a_out x a_in`` slices) and per-row constants. A grouped step computes whole groups, each over
    its own inputs (as :func:`gated_spec`)."""
    (c, h, w), (o, ho, wo) = step.in_shape, step.out_shape
    consts = o * CONST_BITS_PER_ROW * step.outputs
    codes = step.weight_bits - consts
    if step.groups > 1:
        groups = a_out // max(o // step.groups, 1)
        cin, keep_w = groups * (c // step.groups), a_out / max(o, 1)
    else:
        groups, cin, keep_w = 1, a_in, a_in * a_out / max(c * o, 1)
    return replace(step, in_shape=(cin, h, w), out_shape=(a_out, ho, wo), groups=max(groups, 1),
                   read_bits=round(step.read_bits * a_in / max(c, 1)),
                   write_bits=round(step.write_bits * a_out / max(o, 1)),
                   weight_bits=round(codes * keep_w) + round(consts * a_out / max(o, 1)))


def predictor_step(step: EuStep, wbits: int = 8, in_bits: int = 8, gate_bits: int = 8) -> EuStep:
    """The saliency predictor of a gated step as a step of its own (``Linear(C_in -> C_out)`` on the pooled
    input, always dense): it reads the ``C_in`` pooled values (summed in the producer's output pipeline),
    its weights and per-row constants, and writes ``C_out`` gate codes."""
    ci, co = step.in_shape[0], step.out_shape[0]
    return EuStep(f"{step.name}.predictor", "linear", (ci, 1, 1), (co, 1, 1), in_bits=in_bits, wbits=wbits,
                  read_bits=ci * in_bits, write_bits=co * gate_bits,
                  weight_bits=ci * co * wbits + co * CONST_BITS_PER_ROW)


def dynamic_mnisc(steps: Sequence[EuStep], counts: Counts, cfg: EuConfig | None = None,
                  part: str | Part = "xc7z020", *, predictors: bool = True,
                  with_predictor: Collection[str] | None = None, predictor_bits: int = 8) -> DynamicEstimate:
    """The single engine's frame time for every image of ``counts`` (the module doc): ``steps`` the dense
    network's program (:func:`mixq.rtl.mnisc.eu_steps`; ``counts`` by step, e.g. from
    :func:`mixq.rtl.mnisc.step_counts`), a counted conv or add step priced by :func:`gated_step`
    (fewer rows and input channels: fewer cycles; fewer weights, inputs and outputs through DDR), each with
    its predictor step before it (``predictors``; ``with_predictor`` as :func:`dynamic_overlay`'s, weights of
    ``predictor_bits``). The EU and its resources do not change per image."""
    frames = _check_counts({s.name: (s.in_shape[0], s.out_shape[0]) for s in steps if s.kind in ("conv", "add")},
                           counts)
    cfg = cfg or EuConfig()
    p = get_part(part)
    gated_steps = _gated(counts, predictors, with_predictor)
    full: list[EuStep] = []
    for st in steps:
        if st.name in gated_steps:
            full.append(predictor_step(st, predictor_bits, min(st.in_bits, 8)))
        full.append(st)

    def cost(st: EuStep) -> Cost:
        t = step_times([st], cfg, p)[0]
        return t.cycles, t.seconds, 0 if st.is_move else st.weight_bits

    @functools.cache
    def gated(i: int, a_in: int, a_out: int) -> Cost:
        return cost(gated_step(full[i], a_in, a_out))

    return _distribution(p.name, "mnisc", [st.name for st in full], counts, frames, [cost(st) for st in full], gated,
                         {f"{n}.predictor" for n in gated_steps})


def streaming_gain(stage_cycles: Mapping[str, int], stage_pe: Mapping[str, int], channels: Mapping[str, int],
                   counts: Counts) -> dict[str, float]:
    """Frame-interval gain of a streaming design that skips suppressed output channels (module doc).

    ``stage_cycles`` / ``stage_pe``: every stage's dense cycles per frame and PE count (a streaming
    estimate's layers); ``channels``: the output channels of the gated layers. Per image the interval is
    the slowest stage, a gated stage taking ``cycles * ceil(a_out / PE) / ceil(C_out / PE)``. Returns the
    dense interval, the mean and p95 interval and the mean gain."""
    frames = {len(v) for v in counts.values()}
    if len(frames) != 1:
        raise HardwareError("streaming_gain: counts must cover the same images in every layer")
    n = frames.pop()
    dense = max(stage_cycles.values())
    per = []
    for f in range(n):
        worst = 0.0
        for name, cyc in stage_cycles.items():
            t = float(cyc)
            if name in counts:
                pe = max(1, stage_pe[name])
                t = cyc * math.ceil(counts[name][f][1] / pe) / math.ceil(channels[name] / pe)
            worst = max(worst, t)
        per.append(worst)
    mean = sum(per) / n
    return {"dense_cycles": float(dense), "cycles_mean": mean, "cycles_p95": percentile(per, 95),
            "gain_mean": dense / mean}
