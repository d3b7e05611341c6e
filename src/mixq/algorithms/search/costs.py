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

from mixq.algorithms.search.solvers import pareto_rows
from mixq.algorithms.search.space import Option, layer_plan
from mixq.graph.spec import LayerSpec
from mixq.hw.cost import RESOURCE_NAMES, CostModel, Resources
from mixq.hw.lower import HwLayer, lower
from mixq.hw.parts import Part, get_part
from mixq.hw.streaming import io_cycles
from mixq.hw.streamops import stream_engine, stream_lanes
from mixq.hw.units import (
    ArchOptions,
    budget,
    divisors,
    engine_cycles,
    engine_grid,
    shell,
)
from mixq.plan import QuantPlan

N_RES = len(RESOURCE_NAMES)


@dataclass(frozen=True)
class Grid:
    """A layer's foldings in one option, costed: ``pes`` x ``simds``, ``cycles`` and ``resources`` per pair."""

    pes: np.ndarray
    simds: np.ndarray
    cycles: np.ndarray
    resources: np.ndarray
    # the distinct cycle counts, ascending: which foldings meet a budget t changes only where t crosses one, so
    # searchsorted(steps, t, "right") names the set
    steps: np.ndarray


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
        self._grid: dict[tuple[str, int], Grid] = {}
        self._choices: dict[tuple[str, int, int], list[HwChoice]] = {}
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

    def grid(self, name: str, oi: int) -> Grid:
        """Every folding of ``name`` in option ``oi``, costed at once (:func:`mixq.hw.units.engine_grid`, the same
        numbers as :func:`mixq.hw.units.compute_engine` bit for bit): ``pe`` values (at least one per live row
        group), ``simd`` values, cycles ``(P, S)`` and resources ``(P, S, 5)``."""
        k = (name, oi)
        g = self._grid.get(k)
        if g is None:
            ly = self.layers[oi][name]
            live = sum(1 for gr in ly.groups if gr.fraction > 0)
            pes = np.array([p for p in divisors(ly.spec.weight_rows) if p >= live], dtype=np.int64)
            simds = np.array(divisors(ly.spec.row_length), dtype=np.int64)
            pp, ss = np.meshgrid(pes, simds, indexing="ij")
            cyc, res, _ = engine_grid(ly, pp.ravel().tolist(), ss.ravel().tolist(), self.part, self.model,
                                      self.opts)
            g = self._grid[k] = Grid(pes, simds, cyc.reshape(pp.shape), res.reshape(pp.shape + (N_RES,)),
                                     np.unique(cyc))
        return g

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
        g = self.grid(name, oi)
        key = (name, oi, int(np.searchsorted(g.steps, t, side="right")))  # the same set for every t between steps
        got = self._choices.get(key)
        if got is None:
            got = self._choices[key] = self._choices_at(g, oi, t)
        return list(got)

    @staticmethod
    def _choices_at(g: Grid, oi: int, t: float) -> list[HwChoice]:
        meet = g.cycles <= t
        rows = np.flatnonzero(meet.any(axis=1))
        if not len(rows):
            return []
        cols = meet[rows].argmax(axis=1)  # each pe's smallest simd that meets t
        res = g.resources[rows, cols]
        return [HwChoice(oi, int(g.pes[rows[i]]), int(g.simds[cols[i]]), int(g.cycles[rows[i], cols[i]]),
                         tuple(float(x) for x in res[i])) for i in pareto_rows(res)]

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
