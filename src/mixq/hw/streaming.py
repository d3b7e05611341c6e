"""Streaming dataflow (FINN / Tomato): one engine per layer, folding, and the multi-FPGA split.

Throughput is ``clock / max_layer_cycles`` (the slowest engine), latency the sum of
the engines' cycles for one frame (every engine finishes a frame before the
next layer's last output is out; a conservative FINN-style estimate). mixq's RTL
(:mod:`mixq.rtl.network`) takes one input pixel a beat and gives one output code a
beat on its AXI4-Stream ports, so a frame takes at least that many cycles
(:func:`io_cycles`; FINN's dataflow, ``ArchOptions(dataflow="finn")``, is left as FINN
prices it).

The folding optimizer works on each compute layer's Pareto list of foldings
(cycles vs. share of the part, ``sum_r used_r / budget_r``): for a cycle target
``T`` every layer takes its cheapest folding with ``cycles <= T``; the best design
is the smallest ``T`` whose engines fit (binary search over the candidate
cycle counts). A target FPS fixes ``T = clock / fps`` and so gives the fewest
resources that meet it.

Multi-FPGA: the pipeline is cut into at most ``n`` contiguous segments, one per
part; a segment must fit a part (with its own shell) and every cut must carry
the tensors alive across it (the activations, and a residual's skip tensor) at
the frame rate within ``link_gbps``. Greedy longest segments are optimal for
"fits in at most n parts" because a prefix of a feasible segment is feasible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixq.errors import HardwareError
from mixq.graph.spec import LayerSpec
from mixq.hw import finnglue
from mixq.hw.cost import RESOURCE_NAMES, CostModel, Resources
from mixq.hw.lower import HwLayer
from mixq.hw.parts import Part
from mixq.hw.pe import PeConfig
from mixq.hw.streamops import stream_engine, stream_lanes
from mixq.hw.units import (
    ArchOptions,
    ById,
    EngineCost,
    budget,
    compute_engine,
    ddr_bits,
    divisors,
    engine_grid,
    layer_key,
    memo,
    shell,
    weight_bits,
)
from mixq.hw.window import input_beats, output_beats


def share(r: Resources, b: Resources) -> float:
    """Scalar size of ``r`` on a part with budget ``b`` (sum of per-resource shares)."""
    return sum(getattr(r, n) / getattr(b, n) for n in RESOURCE_NAMES if getattr(b, n) > 0)


@dataclass(frozen=True)
class Design:
    """Engines of every layer at one folding, in pipeline order."""

    layers: tuple[HwLayer, ...]
    engines: tuple[EngineCost, ...]
    external: tuple[str, ...] = ()  # layers whose weights stream from DDR
    ddr_cycles: int = 0  # cycles per frame the DDR needs to deliver those weights
    io_cycles: int = 0  # cycles per frame of the stream ports (:func:`io_cycles`)

    @property
    def engine_cycles(self) -> int:
        return max((e.cycles for e in self.engines), default=1)

    @property
    def cycles(self) -> int:
        """Cycles per frame: the slowest engine, or the DDR when its weight traffic takes longer, or the stream
        ports."""
        return max(self.engine_cycles, self.ddr_cycles, self.io_cycles)

    @property
    def resources(self) -> Resources:
        return Resources.total(e.resources for e in self.engines)

    def folding(self) -> dict[str, tuple[int, int]]:
        return {ly.name: (e.pe, e.simd) for ly, e in zip(self.layers, self.engines, strict=True) if ly.is_compute}


def io_cycles(layers: list[HwLayer], opts: ArchOptions) -> int:
    """Cycles per frame of mixq's RTL stream ports (:mod:`mixq.rtl.network`): one input pixel word a beat
    (``mixq_axis_in``), one output code a beat (``mixq_axis_out``); 0 for FINN's dataflow, priced as FINN does."""
    if opts.dataflow != "mixq" or not layers:
        return 0
    return max(input_beats(layers[0].spec.in_shape), output_beats(layers[-1].spec.out_shape))


def build(layers: list[HwLayer], folding: dict[str, tuple[int, int]], part: Part, model: CostModel,
          opts: ArchOptions, target_cycles: int | None = None,
          engines: dict[str, EngineCost] | None = None, external: frozenset[str] = frozenset(),
          streams: dict[tuple[str, int], EngineCost] | None = None) -> Design:
    """Engines at a given folding (missing layers: the plan's mapping; ``engines``: already costed
    compute engines; ``external``: layers whose weights come from DDR); stream operators get the
    lanes to keep pace with the slowest compute engine (``streams``: a cache of them by layer and lanes)."""
    comp = dict(engines or {})
    for ly in layers:
        if ly.is_compute and ly.name not in comp:
            pe, simd = folding.get(ly.name, (ly.mapping.pe, ly.mapping.simd))
            comp[ly.name] = compute_engine(ly, pe, simd, part, model, opts, ly.name in external)
    t = target_cycles or max((e.cycles for e in comp.values()), default=1)
    cache = {} if streams is None else streams

    def stream(ly: HwLayer) -> EngineCost:
        key = (ly.name, stream_lanes(ly, t))
        if key not in cache:
            cache[key] = stream_engine(ly, key[1], part, model, opts)
        return cache[key]

    engines_ = tuple(comp[ly.name] if ly.is_compute else stream(ly) for ly in layers)
    if opts.dataflow == "finn":  # register slices, width converters and IODMAs between FINN's nodes
        engines_ = finnglue.glue(layers, engines_, part, model)
    ext = tuple(ly.name for ly in layers if ly.name in external)
    return Design(tuple(layers), engines_, ext, ddr_cycles(layers, external, part, opts), io_cycles(layers, opts))


def ddr_cycles(layers: list[HwLayer], external: frozenset[str], part: Part, opts: ArchOptions) -> int:
    """Clock cycles per frame the board's DDR needs for the weights of the ``external`` layers."""
    bits = sum(ddr_bits(ly) for ly in layers if ly.name in external)
    if not bits:
        return 0
    return math.ceil(bits / (part.ddr_gbps * 8e9 * opts.ddr_efficiency) * part.clock_mhz * 1e6)


def externalize(layers: list[HwLayer], folding: dict[str, tuple[int, int]], part: Part, model: CostModel,
                opts: ArchOptions, external: frozenset[str] = frozenset()) -> frozenset[str] | None:
    """Layers to move to DDR so the design's memories fit one part (layers with the fewest output
    pixels first: their weights are re-read least often); None when even that does not fit."""
    b = budget(part, opts)
    ext = set(external)
    order = sorted((ly for ly in layers if ly.is_compute and ly.name not in ext),
                   key=lambda ly: (ly.spec.out_pixels, -weight_bits(ly)))
    costed: dict[tuple[str, bool], EngineCost] = {}  # an engine changes only when its layer moves to DDR

    def engine(ly: HwLayer) -> EngineCost:
        key = (ly.name, ly.name in ext)
        if key not in costed:
            pe, simd = folding.get(ly.name, (ly.mapping.pe, ly.mapping.simd))
            costed[key] = compute_engine(ly, pe, simd, part, model, opts, key[1])
        return costed[key]

    while True:
        d = build(layers, folding, part, model, opts, external=frozenset(ext),
                  engines={ly.name: engine(ly) for ly in layers if ly.is_compute})
        used = d.resources + shell(opts)
        over = max(used.bram - b.bram, 0.0) / max(part.bram, 1) + max(used.uram - b.uram, 0.0) / max(part.uram, 1)
        if over <= 0:
            return frozenset(ext)
        if not order:
            return None
        by_name = {ly.name: e for ly, e in zip(d.layers, d.engines, strict=True)}
        freed = 0.0
        while order and freed < over:
            ly = order.pop(0)
            w = by_name[ly.name].detail.get("weights", Resources())
            freed += w.bram / max(part.bram, 1) + (w.uram / part.uram if part.uram else 0.0)
            ext.add(ly.name)


class _Candidates:
    """A compute layer's foldings: cycles, resources and PE split of each, costed in bulk (read-only arrays: one
    instance serves every layer of the same description, in this estimate and the next ones, see :meth:`of`)."""

    def __init__(self, layer: HwLayer, part: Part, model: CostModel, opts: ArchOptions, max_lanes: float,
                 external: bool = False) -> None:
        s = layer.spec
        live = sum(1 for g in layer.groups if g.fraction > 0)
        pes = [p for p in divisors(s.weight_rows) if p >= live] or [max(live, 1)]
        # an engine with more lanes than the whole part could hold never fits: skip costing it
        self.pairs = [(p, d) for p in pes for d in divisors(s.row_length) if p * d <= max_lanes] or [(pes[0], 1)]
        self.cycles, self.res, self.split = engine_grid(layer, [p for p, _ in self.pairs],
                                                        [d for _, d in self.pairs], part, model, opts, external)
        for a in (self.cycles, self.res, self.split):
            a.setflags(write=False)
        self._engines: dict[int, EngineCost] = {}

    @classmethod
    def of(cls, layer: HwLayer, part: Part, model: CostModel, opts: ArchOptions, max_lanes: float,
           external: bool = False) -> _Candidates:
        """The candidates of ``layer``, shared by every layer with its description (:func:`layer_key`) on the
        same part, cost model and options (a mixq-dataflow engine's price reads nothing else)."""
        if opts.dataflow != "mixq":  # FINN's engines read the layer's name and neighbours too
            return cls(layer, part, model, opts, max_lanes, external)
        key = (layer_key(layer), part, ById(model), opts, max_lanes, external)
        hit: _Candidates | None = _FRONTS.get(key)
        if hit is None:
            hit = cls(layer, part, model, opts, max_lanes, external)
            _FRONTS.put(key, hit)
        return hit

    def engine(self, i: int) -> EngineCost:
        """The engine of folding ``i`` (without the per-part breakdown: ``compute_engine`` at the same
        folding gives it, with the same figures)."""
        e = self._engines.get(i)
        if e is None:
            p, d = self.pairs[i]
            e = self._engines[i] = EngineCost(int(self.cycles[i]), Resources(*(float(v) for v in self.res[i])),
                                              p, d, tuple(int(x) for x in self.split[i]))
        return e


_FRONTS = memo(1024)  # _Candidates by layer description, part, cost model, options, lane bound, DDR weights


class _Pool:
    """Every compute layer's foldings side by side (one array per quantity, layer ``k`` at
    ``starts[k]:starts[k + 1]``), so a pick or a repair step is one vectorized pass over all layers."""

    def __init__(self, fronts: dict[str, _Candidates]) -> None:
        self.names = list(fronts)
        self.fronts = [fronts[n] for n in self.names]
        sizes = [len(fr.cycles) for fr in self.fronts]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.layer = np.repeat(np.arange(len(sizes)), sizes)
        self.cycles = np.concatenate([fr.cycles for fr in self.fronts])
        self.res = np.concatenate([fr.res for fr in self.fronts])
        self._tie = 1e-9 * self.cycles
        self._costs: dict[bytes, np.ndarray] = {}  # the cost of every folding per weight vector seen

    def at(self, t: float, w: np.ndarray) -> dict[str, int] | None:
        """Per layer, the index of its cheapest folding (``resources @ w``) with ``cycles <= t``, the
        first on ties; None if some layer has none."""
        g = self.at_global(t, w)
        if g is None:
            return None
        return {n: int(i) for n, i in zip(self.names, g - self.starts[:-1], strict=True)}

    def at_global(self, t: float, w: np.ndarray) -> np.ndarray | None:
        """:meth:`at` as indices into the pool (one per layer, in layer order)."""
        key = w.tobytes()
        base = self._costs.get(key)
        if base is None:
            if len(self._costs) > 64:
                self._costs.clear()
            base = self._costs[key] = self.res @ w + self._tie
        cost = np.where(self.cycles <= t, base, np.inf)
        low = np.minimum.reduceat(cost, self.starts[:-1])
        if not np.isfinite(low).all():
            return None
        hit = np.flatnonzero(cost == low[self.layer])
        if len(hit) == len(self.names):  # one cheapest folding per layer: no tie to break
            return hit
        at = self.layer[hit]  # ascending: the first hit of each layer is where the layer changes
        return hit[np.flatnonzero(np.diff(at, prepend=-1))]

    def repair(self, pick: dict[str, int], t: float, fixed: np.ndarray, cap: np.ndarray,
               steps: int = 200) -> dict[str, int] | None:
        """Greedy descent on the total relative overflow: swap one layer's folding at a time (within
        the cycle bound) while that shrinks ``sum_r max(0, used_r - cap_r) / cap_r``; None if stuck.
        Each step takes the best swap over all layers (the first layer, then the first folding, on ties)."""
        pick = dict(pick)
        used = fixed + sum(fr.res[pick[n]] for n, fr in zip(self.names, self.fronts, strict=True))
        glob = np.array([self.starts[k] + pick[n] for k, n in enumerate(self.names)])

        def over(u: np.ndarray) -> np.ndarray:
            return np.maximum(u - cap, 0.0) / cap

        cur = float(over(used).sum())
        if cur <= 1e-12:
            return pick
        # only the foldings within the cycle bound can be swapped in (in pool order, so argmin's first of
        # equal scores is the pool's); each one's layer's current row is kept beside it, updated per step
        ok = np.flatnonzero(self.cycles <= t)
        res, layer = self.res[ok], self.layer[ok]
        seg = np.searchsorted(layer, np.arange(len(self.names) + 1))
        rows = self.res[glob[layer]]
        buf = np.empty_like(res)
        for _ in range(steps):
            if cur <= 1e-12:
                return pick
            # over(used + res - rows) per row, the same operations in place
            np.subtract(np.add(res, used, out=buf), rows, out=buf)
            np.divide(np.maximum(np.subtract(buf, cap, out=buf), 0.0, out=buf), cap, out=buf)
            score = buf.sum(axis=1)
            i = int(np.argmin(score))
            if not score[i] < cur - 1e-9:
                return None
            j, k = int(ok[i]), int(layer[i])
            used = used + self.res[j] - self.res[glob[k]]
            glob[k] = j
            rows[seg[k]:seg[k + 1]] = self.res[j]
            pick[self.names[k]] = j - int(self.starts[k])
            cur = float(score[i])
        return pick if cur <= 1e-12 else None


def cut_bits(specs: list[LayerSpec], layers: list[HwLayer]) -> list[int]:
    """Bits per frame crossing a cut after each hardware layer (live tensors, incl. skips)."""
    pos = {s.name: i for i, s in enumerate(specs)}
    last_use: dict[str, int] = {}
    for i, s in enumerate(specs):
        for n in s.inputs:
            last_use[n] = max(last_use.get(n, -1), i)
    # live[i]: elements of the tensors made at or before spec i and read after it (each spec j counts at
    # every i in [j, last use - 1]: a running sum of starts and ends)
    delta = [0] * (len(specs) + 1)
    for j, s in enumerate(specs):
        end = last_use.get(s.name, -1)
        if end > j and s.out_shape:
            delta[j] += math.prod(s.out_shape)
            delta[end] -= math.prod(s.out_shape)
    live, acc = [], 0
    for x in delta[:-1]:
        acc += x
        live.append(acc)
    return [live[pos.get(ly.name, 0)] * ly.out_bits if specs else 0 for ly in layers]


@dataclass(frozen=True)
class Partition:
    """Which pipeline stages go to which part, and the traffic on each link."""

    segments: tuple[tuple[int, int], ...]  # [start, end) indices into the design's layers
    link_bits: tuple[int, ...]  # bits per frame on the link after each segment but the last


def partition(design: Design, n_parts: int, part_budget: Resources, cuts: list[int], fps: float,
              link_gbps: float, opts: ArchOptions) -> Partition | None:
    """Greedy split into at most ``n_parts`` contiguous segments that each fit one part."""
    segs: list[tuple[int, int]] = []
    start, n = 0, len(design.engines)
    cap = link_gbps * 1e9
    if n_parts == 1 and n:  # one segment or none: every prefix fits when the whole does (sums only grow)
        rows = np.array([shell(opts), *(e.resources for e in design.engines)], dtype=float)
        whole = Resources(*(float(v) for v in np.cumsum(rows, axis=0)[-1]))  # the loop's order of additions
        return Partition(((0, n),), ()) if whole.fits(part_budget) else None
    while start < n:
        if len(segs) == n_parts:
            return None
        acc = shell(opts)
        end, best = start, None
        while end < n:
            acc = acc + design.engines[end].resources
            if not acc.fits(part_budget):
                break
            end += 1
            if end == n or cuts[end - 1] * fps <= cap:
                best = end
        if best is None:
            return None
        segs.append((start, best))
        start = best
    links = tuple(cuts[e - 1] for _, e in segs[:-1])
    return Partition(tuple(segs), links)


def device_lanes(part: Part, layers: list[HwLayer], model: CostModel) -> float:
    """MACs per cycle the whole part could sustain (every DSP packed, every LUT a cheapest lane)."""
    best = math.inf
    for ly in layers:
        for g in ly.groups:
            if g.core == "lut":
                cfg = PeConfig(g.kind, g.wbits, g.abits, 16, acc_len=1024)
                best = min(best, model.pe(cfg, part.dsp_type).lut / 16)
    lut_lanes = part.lut / best if best < math.inf else 0.0
    return max(part.dsp * 2 + lut_lanes, 1.0)


def optimize(layers: list[HwLayer], specs: list[LayerSpec], part: Part, model: CostModel, opts: ArchOptions,
             n_parts: int = 1, target_fps: float | None = None) -> tuple[Design, Partition | None]:
    """The fastest design that fits ``n_parts`` parts (or the cheapest meeting ``target_fps``)."""
    b = budget(part, opts)
    lanes = device_lanes(part, layers, model)
    fronts = {ly.name: _Candidates.of(ly, part, model, opts, lanes) for ly in layers if ly.is_compute}
    ext: frozenset[str] = frozenset()
    cuts = cut_bits(specs, layers)
    clock = part.clock_mhz * 1e6
    bvec = np.array([x if x > 0 else np.inf for x in b.as_tuple()])

    streams: dict[tuple[str, int], EngineCost] = {}
    # the pool of every layer's foldings and the designs tried on it, renewed when a layer's foldings change
    # (its weights moved to DDR: ``renew``)
    state: dict[str, Any] = {}

    def renew() -> None:
        state.clear()

    def pool() -> _Pool:
        if "pool" not in state:
            state["pool"] = _Pool(fronts)
        return state["pool"]  # type: ignore[no-any-return]

    def picks_at(t: int, w: np.ndarray) -> np.ndarray | None:
        return pool().at_global(t, w / bvec)

    def as_dict(g: np.ndarray) -> dict[str, int]:
        pl = pool()
        return {n: int(i) for n, i in zip(pl.names, g - pl.starts[:-1], strict=True)}

    def design_of(t: int, picks: dict[str, int]) -> Design:
        return build(layers, {}, part, model, opts, t, engines={n: fronts[n].engine(i) for n, i in picks.items()},
                     external=ext, streams=streams)

    # one part: a pick is judged on the resource rows alone (the shell, then every layer's engine in layer
    # order, summed as ``build`` / ``partition`` sum them, so the figures are the same to the last bit); the
    # Design is built only for the pick that fits
    is_comp = np.array([ly.is_compute for ly in layers], dtype=bool)
    comp_at, stream_at = np.flatnonzero(is_comp), np.flatnonzero(~is_comp)
    stream_rows: dict[int, np.ndarray] = {}

    def streams_at(t: int) -> np.ndarray:
        if t not in stream_rows:
            rows = []
            for ly in layers:
                if not ly.is_compute:
                    key = (ly.name, stream_lanes(ly, t))
                    if key not in streams:
                        streams[key] = stream_engine(ly, key[1], part, model, opts)
                    rows.append(streams[key].resources.as_tuple())
            stream_rows[t] = np.array(rows, dtype=float).reshape(-1, len(RESOURCE_NAMES))
        return stream_rows[t]

    def rows_of(t: int, picks: np.ndarray) -> np.ndarray:
        rows = np.empty((len(layers), len(RESOURCE_NAMES)))
        rows[comp_at] = pool().res[picks]
        rows[stream_at] = streams_at(t)
        return rows

    shell_row = np.array(shell(opts).as_tuple(), dtype=float)

    def attempt(t: int) -> tuple[Design, Partition | None] | None:
        """The design at cycle target ``t`` (None: none fits), once per target and set of foldings."""
        tried = state.setdefault("tried", {})
        if t not in tried:
            tried[t] = _attempt(t)
        return tried[t]  # type: ignore[no-any-return]

    def _attempt(t: int) -> tuple[Design, Partition | None] | None:
        w = np.ones(len(RESOURCE_NAMES))
        picks = None
        rows = None
        for _ in range(8):  # re-weight the resources that overflow, then try again
            picks = picks_at(t, w)
            if picks is None:
                return None
            if n_parts == 1:
                rows = rows_of(t, picks)
                whole = np.cumsum(np.vstack([shell_row, rows]), axis=0)[-1]
                if Resources(*(float(v) for v in whole)).fits(b):
                    return design_of(t, as_dict(picks)), Partition(((0, len(layers)),), ())
                total = np.cumsum(rows, axis=0)[-1]  # Resources.total's order of additions
                used, eng = total + shell_row, total
            else:
                d = design_of(t, as_dict(picks))
                p = partition(d, n_parts, b, cuts, clock / max(d.cycles, 1), opts.link_gbps, opts)
                if p is not None:
                    return d, p
                used = np.array((d.resources + shell(opts)).as_tuple())
                eng = np.array(d.resources.as_tuple())
            ratio = used / (bvec * n_parts)
            if not (ratio > 1).any():
                ratio = eng / bvec  # a split problem: favour the scarcest
            w = w * np.maximum(ratio, 1.0) ** 1.5
        if picks is None:
            return None
        # then repair the last choice directly against the (summed) budget
        if n_parts == 1 and rows is not None:
            srows = rows[stream_at]
            stream = Resources(*(float(v) for v in (np.cumsum(srows, axis=0)[-1] if len(srows)
                                                   else np.zeros(len(RESOURCE_NAMES))))) + shell(opts) * n_parts
        else:
            stream = Resources.total(e.resources for ly, e in zip(d.layers, d.engines, strict=True)
                                     if not ly.is_compute) + shell(opts) * n_parts
        cap = np.array([x if x > 0 else 1e-9 for x in (b * n_parts).as_tuple()])
        fixed = np.array(stream.as_tuple())
        repaired = pool().repair(as_dict(picks), t, fixed, cap)
        if repaired is None:
            return None
        d = design_of(t, repaired)
        p = partition(d, n_parts, b, cuts, clock / max(d.cycles, 1), opts.link_gbps, opts)
        return (d, p) if p is not None else None

    io = io_cycles(layers, opts)  # no design is faster than its stream ports: no folding faster than them pays
    ts = cycle_targets(fronts.values(), io, io if io else None)
    if not ts:
        d = build(layers, {}, part, model, opts)
        return d, partition(d, n_parts, b, cuts, clock / d.cycles, opts.link_gbps, opts)
    slowest = attempt(ts[-1])
    if slowest is None and opts.ddr_weights == "auto" and n_parts == 1:
        # weights that do not fit on chip stream from DDR (bounded by its bandwidth)
        got_ext = externalize(layers, {n: (1, 1) for n in fronts}, part, model, opts)
        if got_ext:
            ext = got_ext
            for ly in layers:
                if ly.name in ext:
                    fronts[ly.name] = _Candidates.of(ly, part, model, opts, lanes, external=True)
            renew()
            t_ddr = ddr_cycles(layers, ext, part, opts)
            ts = cycle_targets(fronts.values(), max(t_ddr, io), ts[-1])
            slowest = attempt(ts[-1])
    if slowest is None:
        d = build(layers, {n: (1, 1) for n in fronts}, part, model, opts, external=ext)
        raise HardwareError(_no_fit_message(d, part, b, n_parts, opts))
    if target_fps is not None:
        t = int(clock // target_fps)
        got = attempt(t) if t >= ts[0] else None
        if got is None:
            best = _search(ts, attempt)
            best_fps = clock / max(best[0].cycles, 1)
            raise HardwareError(f"target {target_fps:g} FPS is not reachable on {n_parts} x {part.name}: "
                                f"the best that fits is {best_fps:.1f} FPS")
        return got
    best = _search(ts, attempt)
    if ext:
        # more weights in DDR free block RAM for faster foldings, until the DDR traffic binds
        order = [ly for ly in sorted((ly for ly in layers if ly.is_compute and ly.name not in ext),
                                     key=lambda ly: (ly.spec.out_pixels, -weight_bits(ly)))]
        for ly in order[:8]:
            ext = ext | {ly.name}
            fronts[ly.name] = _Candidates.of(ly, part, model, opts, lanes, external=True)
            renew()
            t_ddr = ddr_cycles(layers, ext, part, opts)
            if t_ddr >= best[0].cycles:
                break
            ts2 = cycle_targets(fronts.values(), max(t_ddr, io))
            got = attempt(ts2[-1]) if ts2 else None
            if got is None:
                break
            cand = _search(ts2, attempt)
            if cand[0].cycles >= best[0].cycles:
                break
            best = cand
    return best


def cycle_targets(fronts: Iterable[_Candidates], low: int = 0, extra: int | None = None) -> list[int]:
    """The distinct cycle counts of all candidate foldings from ``low`` up (and ``extra``), ascending."""
    c = np.concatenate([fr.cycles for fr in fronts])
    c = c[c >= low]
    if extra is not None:
        c = np.append(c, extra)
    c = np.sort(c)
    return c[np.flatnonzero(np.diff(c, prepend=-1))].tolist()  # type: ignore[no-any-return]


def _search(ts: list[int], attempt: object) -> tuple[Design, Partition | None]:
    lo, hi = 0, len(ts) - 1
    best = attempt(ts[hi])  # type: ignore[operator]
    while lo < hi:
        mid = (lo + hi) // 2
        got = attempt(ts[mid])  # type: ignore[operator]
        if got is not None:
            best, hi = got, mid
        else:
            lo = mid + 1
    return best  # type: ignore[no-any-return]


def overflow_lines(d: Design, b: Resources, shell_res: Resources) -> list[tuple[str, float, float, str, float]]:
    """(resource, used, available, largest layer, its use) for each resource over budget."""
    used = d.resources + shell_res
    out = []
    for n in RESOURCE_NAMES:
        u, a = getattr(used, n), getattr(b, n)
        if u > a + 1e-9:
            top = max(zip(d.layers, d.engines, strict=True), key=lambda le: getattr(le[1].resources, n))
            out.append((n, u, a, top[0].name, getattr(top[1].resources, n)))
    return out


def _no_fit_message(d: Design, part: Part, b: Resources, n_parts: int, opts: ArchOptions) -> str:
    lines = overflow_lines(d, b * n_parts, shell(opts) * n_parts)
    if not lines:  # fits in total but not split over the parts (one layer too big, or a link too slow)
        big = max(zip(d.layers, d.engines, strict=True), key=lambda le: share(le[1].resources, b))
        return (f"the design does not fit {n_parts} x {part.name} even at the smallest folding: no split into "
                f"{n_parts} segments fits each part and its links (largest layer: {big[0].name}, "
                f"{100 * share(big[1].resources, b):.0f}% of one part's budget summed over resources)")
    parts = [f"{n} needs {u:,.0f} of {a:,.0f} (+{u - a:,.0f}, {100 * u / a:.0f}%), largest user "
             f"{layer} ({lu:,.0f})" for n, u, a, layer, lu in lines]
    return (f"the design does not fit {n_parts} x {part.name} even at the smallest folding: " + "; ".join(parts))
