"""Bit / scheme / folding allocation at a frame rate: the ILP over (layer, option, folding).

For a cycle budget ``T`` per frame every layer picks one (option, folding) whose engine
meets ``T``; the picks minimise the summed sensitivity under the part's LUT / FF /
DSP / BRAM budget less the stream operators and shell. The fastest reachable design
is the smallest ``T`` for which that problem is feasible (bisection on a geometric
grid of ``T``); "the fastest design within a sensitivity budget" likewise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mixq.algorithms.search.costs import HwChoice, HwTable
from mixq.algorithms.search.sensitivity import Sensitivity
from mixq.algorithms.search.solvers import Item, Problem, Solution, solve_exhaustive, solve_greedy, solve_ilp
from mixq.algorithms.search.space import Option, layer_plan
from mixq.errors import MixqError
from mixq.plan import HwMapping, QuantPlan

SOLVERS: dict[str, Callable[[Problem], Solution | None]] = {
    "ilp": solve_ilp, "exhaustive": solve_exhaustive, "greedy": solve_greedy}


@dataclass(frozen=True)
class Allocation:
    """Per compute layer its option and folding, at ``cycles`` per frame."""

    cycles: int
    choices: dict[str, HwChoice]
    options: dict[str, Option]
    sensitivity: float
    solve_s: float
    solver: str
    residual_bits: int | None = None  # the table's residual streams (None: exact)

    def fps(self, table: HwTable) -> float:
        return table.fps_of(max(c.cycles for c in self.choices.values()))


def problem_at(table: HwTable, sens: Sensitivity, t: float,
               cap_scale: float = 1.0) -> tuple[Problem, list[list[HwChoice]]]:
    """The knapsack at ``t`` cycles per frame (``cap_scale`` < 1 leaves headroom)."""
    cap = table.budget * cap_scale - table.fixed(t)
    items: list[tuple[Item, ...]] = []
    payload: list[list[HwChoice]] = []
    for n in table.names:
        ch: list[HwChoice] = []
        its: list[Item] = []
        for oi, o in enumerate(table.options):
            s = sens.of(n, o.wbits, o.abits, o.rho)
            for c in table.choices(n, oi, t):
                ch.append(c)
                its.append(Item(s, c.res))
        items.append(tuple(its))
        payload.append(ch)
    return Problem(tuple(items), tuple(float(x) for x in cap)), payload


def allocate(table: HwTable, sens: Sensitivity, t: float, solver: str = "ilp",
             cap_scale: float = 1.0, feasibility_only: bool = False) -> Allocation | None:
    """The least sensitive allocation meeting ``t`` cycles per frame, or None if none fits
    (``feasibility_only``: any allocation that fits, ILP only)."""
    if solver not in SOLVERS:
        raise MixqError(f"search.solver: {solver!r} is not one of {', '.join(SOLVERS)}")
    prob, payload = problem_at(table, sens, t, cap_scale)
    sol: Solution | None = (solve_ilp(prob, feasibility_only=True) if feasibility_only and solver == "ilp"
                            else SOLVERS[solver](prob))
    if sol is None:
        return None
    choices = {n: payload[li][i] for li, (n, i) in enumerate(zip(table.names, sol.picks, strict=True))}
    return Allocation(int(t), choices, {n: table.options[c.option] for n, c in choices.items()},
                      sol.objective, sol.seconds, sol.solver, table.residual_bits)


def cycle_grid(table: HwTable, step: float = 1.04) -> list[int]:
    """Geometric grid of cycle budgets from the fastest any layer can go (and the stream ports allow) to the slowest
    folding."""
    lo = max(max(min(table.min_cycles(n, oi) for oi in range(len(table.options))) for n in table.names), table.io, 1)
    hi = max(s.weight_rows * max(s.row_length, 1) * max(s.out_pixels, 1) for s in table.specs if s.is_compute)
    n = max(1, math.ceil(math.log(max(hi / lo, 1.0)) / math.log(step)))
    return sorted({int(round(lo * step ** k)) for k in range(n + 1)} | {int(hi)})


def fastest(table: HwTable, sens: Sensitivity, max_sensitivity: float = math.inf,
            cap_scale: float = 1.0) -> Allocation | None:
    """The allocation at the smallest feasible cycle budget whose sensitivity is at most ``max_sensitivity``: without
    a bound the grid's lowest budget (no layer faster, or the stream ports' rate) is tried first; else by bisection
    on the geometric :func:`cycle_grid` (4% steps), then between its last failing and first fitting budget to 0.1%,
    so a target frame rate within the grid's step of the fastest design is not refused."""
    grid = cycle_grid(table)

    bounded = math.isfinite(max_sensitivity)

    def ok(t: int) -> Allocation | None:  # without a sensitivity bound any fitting choice decides
        a = allocate(table, sens, t, cap_scale=cap_scale, feasibility_only=not bounded)
        return a if a is not None and a.sensitivity <= max_sensitivity else None

    best = ok(grid[-1])
    if best is None:
        return None
    lo, hi = 0, len(grid) - 1
    # without a bound, the lowest budget first: a big part often reaches it (the stream ports' rate), and bisection
    # would spend ~8 solves to find that out (a sensitivity bound rarely holds there: bisect at once)
    first = ok(grid[0]) if hi > 0 and not bounded else None
    if first is not None:
        best, hi = first, 0
    while lo < hi:
        mid = (lo + hi) // 2
        got = ok(grid[mid])
        if got is not None:
            best, hi = got, mid
        else:
            lo = mid + 1
    if hi > 0:  # between the grid's last budget that fails and the one that fits (4% apart): to 0.1%
        below, top = grid[hi - 1], _slowest(best)
        while top - below > max(1, top // 1000):
            mid = (below + top) // 2
            got = ok(mid)
            if got is not None:
                best, top = got, _slowest(got)
            else:
                below = mid
    # the least sensitive allocation at the tightest budget known to fit (its slowest layer, not the budget it
    # was found at: a budget above lets the objective pick slower foldings), and no tighter than the stream ports
    return best if bounded else allocate(table, sens, max(_slowest(best), table.io), cap_scale=cap_scale)


def _slowest(a: Allocation) -> int:
    """Cycles a frame of the allocation's slowest layer (at most its budget)."""
    return max(c.cycles for c in a.choices.values())


def to_plan(model_name: str, alloc: Allocation, signed: set[str],
            advantages: dict[str, torch.Tensor] | None = None) -> QuantPlan:
    """The `QuantPlan` of an allocation: formats, SP2 rows (MSQ's rule) and folding per layer, and the residual
    streams' width it was priced at."""
    layers = {}
    for n, c in alloc.choices.items():
        o = alloc.options[n]
        adv = advantages.get(n) if advantages else None
        layers[n] = layer_plan(o, n in signed, adv, HwMapping("auto", c.pe, c.simd))
    return QuantPlan(model_name, layers, meta={"search": {
        "cycles_budget": alloc.cycles, "sensitivity": alloc.sensitivity, "solver": alloc.solver,
        "solve_s": round(alloc.solve_s, 4), "options": {n: o.label for n, o in alloc.options.items()}}},
        residual_bits=alloc.residual_bits)
