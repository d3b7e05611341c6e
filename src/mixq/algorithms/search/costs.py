"""Hardware cost of every (layer, option, folding) on the streaming template, from `mixq.hw`.

Nothing here models hardware: a layer in an option is lowered with
:func:`mixq.hw.lower.lower` and costed with :func:`mixq.hw.units.compute_engine`
(the same functions `mixq.hw.estimate` uses). For a cycle budget ``T`` per frame
(``T = clock / fps``) a layer's candidate foldings are, for every ``pe``, the smallest ``simd`` that meets ``T``;
of those the search keeps the ones no other beats on every resource (the ILP then trades them between layers).
Stream operators (pooling, residual adds) get the lanes they need at ``T`` and, with the per-part shell, form a
fixed cost, priced at the widest option's codes (an upper bound for every plan); residual adds and their skip
FIFOs at the table's ``residual_bits`` (exact streams at the integer engine's width: :mod:`mixq.hw.lower`).
`HwTable.with_residual_bits` gives the same table at another stream width, sharing the compute engines' costs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixq.algorithms.search.space import Option, layer_plan
from mixq.graph.spec import LayerSpec
from mixq.hw.cost import RESOURCE_NAMES, CostModel, Resources
from mixq.hw.lower import HwLayer, lower
from mixq.hw.parts import Part, get_part
from mixq.hw.streaming import io_cycles
from mixq.hw.streamops import stream_engine, stream_lanes
from mixq.hw.units import (
    ArchOptions,
    EngineCost,
    budget,
    compute_engine,
    divisors,
    engine_cycles,
    shell,
)
from mixq.plan import QuantPlan

N_RES = len(RESOURCE_NAMES)


def pareto_rows(res: np.ndarray) -> list[int]:
    """Rows of ``res`` (candidates x resources) that no other row beats: at most as much of every resource and
    less of one; of equal rows the first. In row order.

    >>> pareto_rows(np.array([[2, 1], [1, 2], [2, 2], [1, 2], [3, 0]]))
    [0, 1, 4]
    """
    keep = []
    for i, r in enumerate(res):
        le = np.all(res <= r, axis=1)
        lt = np.any(res < r, axis=1)
        if np.any(le & lt) or np.any(np.all(res[:i] == r, axis=1)):
            continue
        keep.append(i)
    return keep


@dataclass(frozen=True)
class HwChoice:
    """One layer in one option at one folding."""

    option: int
    pe: int
    simd: int
    cycles: int
    res: tuple[float, ...]


class HwTable:
    """Lowered layers of every option, and memoised engine costs (one table per model and part)."""

    def __init__(self, specs: list[LayerSpec], options: Sequence[Option], part: str | Part,
                 signed: Sequence[str] = (), opts: ArchOptions | None = None, model: CostModel | None = None,
                 residual_bits: int | None = None, excluded: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.specs = specs
        self.excluded = excluded  # (layer, option index) pairs no folding may take (the driver's accumulator rule)
        self.options = list(options)
        self.part = get_part(part)
        self.opts = opts or ArchOptions()
        self.model = model or CostModel.default()
        self.names = [s.name for s in specs if s.is_compute]
        sig = set(signed)
        self.layers: list[dict[str, HwLayer]] = []
        for o in self.options:
            plan = QuantPlan("search", {n: layer_plan(o, n in sig) for n in self.names})
            lowered = lower(specs, plan, self.part)
            self.layers.append({ly.name: ly for ly in lowered if ly.is_compute})
        # the stream operators are priced once for every plan, at the widest option's codes: an upper bound, so an
        # allocation the ILP fits fits by the estimate too. An exact residual stream is as wide as the sum of the
        # weight and activation bits (and the row length): by the widest activations alone (w3a8 of the space
        # 3..8 x 4..8) it was 9 BRAM18 short on MobileNetV2 at 8-bit weights, and the plan was re-solved with 3%
        # less of every resource.
        widest = max(range(len(self.options)), key=lambda i: (self.options[i].abits, self.options[i].wbits))
        self._stream_plan = QuantPlan("search", {n: layer_plan(self.options[widest], n in sig) for n in self.names})
        self.residual_bits = residual_bits
        self.streams = self._streams(residual_bits)
        self._cost: dict[tuple[str, int, int, int], EngineCost] = {}
        self._cyc: dict[tuple[str, int, int, int], int] = {}
        self.clock = self.part.clock_mhz * 1e6
        # the stream ports' cycles a frame (one input pixel, one output code a beat): no design is faster
        self.io = io_cycles(lowered, self.opts)
        b = budget(self.part, self.opts)
        self.budget = np.array(b.as_tuple(), dtype=float)
        self._bshare = np.array([x if x > 0 else np.inf for x in b.as_tuple()])

    def _streams(self, residual_bits: int | None) -> list[HwLayer]:
        plan = dataclasses.replace(self._stream_plan, residual_bits=residual_bits)
        return [ly for ly in lower(self.specs, plan, self.part) if not ly.is_compute]

    def with_residual_bits(self, residual_bits: int | None) -> HwTable:
        """This table with residual streams of ``residual_bits`` (None: exact); the engine caches are shared."""
        out = copy.copy(self)
        out.residual_bits, out.streams = residual_bits, self._streams(residual_bits)
        return out

    def engine(self, name: str, oi: int, pe: int, simd: int) -> EngineCost:
        k = (name, oi, pe, simd)
        if k not in self._cost:
            self._cost[k] = compute_engine(self.layers[oi][name], pe, simd, self.part, self.model, self.opts)
        return self._cost[k]

    def _cycles(self, name: str, oi: int, pe: int, simd: int) -> int:
        k = (name, oi, pe, simd)
        c = self._cyc.get(k)
        if c is None:
            c = self._cyc[k] = engine_cycles(self.layers[oi][name], pe, simd)
        return c

    def min_cycles(self, name: str, oi: int) -> int:
        ly = self.layers[oi][name]
        return engine_cycles(ly, ly.spec.weight_rows, ly.spec.row_length)

    def choices(self, name: str, oi: int, t: float) -> list[HwChoice]:
        """Foldings of ``name`` in option ``oi`` with at most ``t`` cycles per frame: for every ``pe`` the smallest
        ``simd`` that meets ``t``, of those the ones no other beats on every resource (:func:`pareto_rows`). Within
        one option every folding has the same sensitivity, so a folding that needs at least as much of every
        resource as another can never be the ILP's better pick: dropping it loses nothing. (It kept the cheapest
        by total share, LUTs and DSPs, two at most, and so missed the block-RAM-cheap foldings a BRAM-bound design
        needs: on MobileNetV2 / XCZU9EG 33 of the 53 layers' W8A8 foldings, and the ILP's plan at uniform W8A8's
        rate was more sensitive than W8A8 itself.)"""
        if (name, oi) in self.excluded:
            return []
        ly = self.layers[oi][name]
        s = ly.spec
        live = sum(1 for g in ly.groups if g.fraction > 0)
        simds = divisors(s.row_length)
        cands: list[EngineCost] = []
        for pe in (p for p in divisors(s.weight_rows) if p >= live):
            if self._cycles(name, oi, pe, simds[-1]) > t:
                continue
            lo, hi = 0, len(simds) - 1  # cycles fall as simd grows: the smallest simd that meets t
            while lo < hi:
                mid = (lo + hi) // 2
                if self._cycles(name, oi, pe, simds[mid]) <= t:
                    hi = mid
                else:
                    lo = mid + 1
            cands.append(self.engine(name, oi, pe, simds[lo]))
        if not cands:
            return []
        res = np.array([c.resources.as_tuple() for c in cands])
        return [HwChoice(oi, cands[i].pe, cands[i].simd, cands[i].cycles, cands[i].resources.as_tuple())
                for i in pareto_rows(res)]

    def fixed(self, t: float) -> np.ndarray:
        """Resources of the stream operators at ``t`` cycles per frame, plus the shell."""
        total = shell(self.opts)
        for ly in self.streams:
            total = total + stream_engine(ly, stream_lanes(ly, t), self.part, self.model, self.opts).resources
        return np.array(total.as_tuple(), dtype=float)

    def cycles_for(self, fps: float) -> int:
        return int(self.clock // fps)

    def fps_of(self, cycles: float) -> float:
        return self.clock / max(cycles, self.io, 1)

    def share(self, res: Sequence[float]) -> float:
        return float(np.asarray(res) @ (1 / self._bshare))

    def resources(self, res: Sequence[float]) -> Resources:
        return Resources(*res)
