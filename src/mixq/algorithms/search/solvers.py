"""Multiple-choice knapsack: pick one item per layer, minimising total sensitivity under resource caps.

Three solvers of the same `Problem`: the integer linear program (``scipy.optimize.milp``,
HiGHS), an exhaustive enumeration and a greedy heuristic; the latter two are for
small cases and for checking the ILP in tests.

>>> p = Problem(((Item(1.0, (2.0,)), Item(3.0, (1.0,))), (Item(1.0, (2.0,)), Item(2.0, (1.0,)))), (3.0,))
>>> solve_ilp(p).picks, solve_exhaustive(p).picks
((0, 1), (0, 1))
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import csr_matrix


@dataclass(frozen=True)
class Item:
    sens: float
    res: tuple[float, ...]


@dataclass(frozen=True)
class Problem:
    """``items[layer]``: the choices of each layer; ``cap``: what the choices may use in total."""

    items: tuple[tuple[Item, ...], ...]
    cap: tuple[float, ...]


@dataclass(frozen=True)
class Solution:
    picks: tuple[int, ...]
    objective: float
    used: tuple[float, ...]
    seconds: float
    solver: str


def _used(p: Problem, picks: tuple[int, ...]) -> tuple[float, ...]:
    tot = np.zeros(len(p.cap))
    for items, i in zip(p.items, picks, strict=True):
        tot += np.asarray(items[i].res)
    return tuple(float(x) for x in tot)


def _fits(used: tuple[float, ...], cap: tuple[float, ...]) -> bool:
    return all(u <= c + 1e-6 * max(1.0, abs(c)) for u, c in zip(used, cap, strict=True))


def _solution(p: Problem, picks: tuple[int, ...], t0: float, solver: str) -> Solution:
    obj = sum(items[i].sens for items, i in zip(p.items, picks, strict=True))
    return Solution(picks, float(obj), _used(p, picks), time.perf_counter() - t0, solver)


def pareto_rows(a: np.ndarray) -> list[int]:
    """Rows of ``a`` (candidates x costs) that no other row beats: no worse in every cost and better in one; of
    identical rows the first is kept. In row order.

    >>> pareto_rows(np.array([[2, 1], [1, 2], [2, 2], [1, 2], [3, 0]]))
    [0, 1, 4]
    """
    if not len(a):
        return []
    le = (a[None, :, :] <= a[:, None, :]).all(axis=2)  # le[i, j]: row j is no worse than row i
    lt = (a[None, :, :] < a[:, None, :]).any(axis=2)
    earlier = np.tri(len(a), k=-1, dtype=bool)  # earlier[i, j]: j < i
    dominated = (le & (lt | earlier)).any(axis=1)
    return [int(i) for i in np.flatnonzero(~dominated)]


def pareto_items(items: tuple[Item, ...]) -> list[int]:
    """Indices of the items no other item dominates (no worse in sensitivity and every resource;
    of identical items the first is kept)."""
    return pareto_rows(np.array([(it.sens, *it.res) for it in items])) if items else []


# HiGHS' relative optimality gap. The sensitivities are estimates, so 1% is far inside their
# error; it found the same optimum as 0.1%, faster (benchmarks/results/design_measurements.md, "ILP gap").
ILP_GAP = 1e-2


@dataclass(frozen=True)
class _Matrices:
    """A `Problem` as the ILP's arrays: one column per Pareto item, the objective scaled (optimum >= 1), each
    finite resource row scaled by its cap."""

    c: np.ndarray  # objective per column
    eq: csr_matrix  # layers x columns: one pick per layer
    a: csr_matrix  # resource rows x columns
    b: np.ndarray  # resource caps
    col_layer: np.ndarray
    col_item: list[int]


def _matrices(p: Problem, feasibility_only: bool) -> _Matrices:
    kept = [pareto_items(items) for items in p.items]
    col_layer = [li for li, ks in enumerate(kept) for _ in ks]
    col_item = [i for ks in kept for i in ks]
    n, nl, nr = len(col_item), len(kept), len(p.cap)
    c = np.array([p.items[li][i].sens for li, i in zip(col_layer, col_item, strict=True)])
    if feasibility_only:
        c = np.zeros_like(c)
    else:  # sensitivities are tiny (KL in nats): scale so the optimum is >= 1 and HiGHS's tolerances fit
        floor = sum(min(p.items[li][i].sens for i in ks) for li, ks in enumerate(kept))
        c = c / max(abs(floor), float(np.abs(c).max()) * 1e-9, 1e-300)
    res = np.array([p.items[li][i].res for li, i in zip(col_layer, col_item, strict=True)]).reshape(n, nr)
    rows = [r for r in range(nr) if res[:, r].max() > 0 and math.isfinite(p.cap[r])]
    capv = np.array([p.cap[r] for r in rows], dtype=float)
    scale = np.where(np.abs(capv) > 1e-9, np.abs(capv), 1.0)  # LUTs ~1e4, DSPs ~1e2: better conditioned
    a = csr_matrix(res[:, rows].T / scale[:, None]) if rows else csr_matrix((0, n))
    eq = csr_matrix((np.ones(n), (col_layer, np.arange(n))), shape=(nl, n))
    return _Matrices(c, eq, a, capv / scale, np.array(col_layer, dtype=int), col_item)


def _lp_bound(m: _Matrices) -> tuple[float, np.ndarray] | None:
    """A lower bound ``B`` of every pick's objective and the columns' reduced costs ``d`` from the LP relaxation's
    duals, such that a pick using column ``k`` costs at least ``B + d[k]``; None when HiGHS gives no optimum
    (no solution, or a numerical failure: the caller then solves the whole ILP, which decides).

    The bound holds for any duals (not only optimal ones): with ``y <= 0`` on the caps, a pick ``x`` costs
    ``c.x = y_eq.1 + y.(A x) + d.x >= y_eq.1 + y.b + d.x``, and ``d.x`` is at least the sum of each layer's most
    negative reduced cost (none at the optimum, bar rounding) plus ``d[k]``."""
    nl = m.eq.shape[0]
    ub = {"A_ub": m.a, "b_ub": m.b} if m.a.shape[0] else {}
    lp = linprog(m.c, A_eq=m.eq, b_eq=np.ones(nl), bounds=(0, None), method="highs", **ub)
    if lp.status != 0:
        return None
    y_eq = np.asarray(lp.eqlin.marginals)
    y = np.minimum(np.asarray(lp.ineqlin.marginals), 0.0) if ub else np.zeros(0)
    d = m.c - m.eq.T @ y_eq - (m.a.T @ y if ub else 0.0)
    return float(y_eq.sum() + y @ m.b + np.minimum(_layer_min(m, d), 0.0).sum()), d


def _layer_min(m: _Matrices, d: np.ndarray) -> np.ndarray:
    """Each layer's least reduced cost."""
    out = np.full(m.eq.shape[0], np.inf)
    np.minimum.at(out, m.col_layer, d)
    return out


def _milp(m: _Matrices, cols: np.ndarray, gap: float, time_limit: float | None) -> np.ndarray | None:
    """The picked columns (indices into ``cols``) of the ILP restricted to ``cols``; None without a solution."""
    cons = [LinearConstraint(m.eq[:, cols], 1, 1)]
    if m.a.shape[0]:
        cons.append(LinearConstraint(m.a[:, cols], -np.inf, m.b))
    # no presolve: on these problems (one pick per layer, a handful of resource rows, thousands of binaries) HiGHS's
    # probing took about a second of every solve and removed 3 of 7,368 columns; an A/B on MobileNetV2's problems at
    # four rates: 0.25-2.0 s without it, 1.6-2.5 s with it, the same optima within the gap
    options: dict[str, float | bool] = {"mip_rel_gap": gap, "presolve": False}
    if time_limit is not None:
        options["time_limit"] = max(time_limit, 1e-3)
    r = milp(m.c[cols], integrality=np.ones(len(cols)), bounds=Bounds(0, 1), constraints=cons, options=options)
    if r.x is None or r.status not in (0, 1):
        return None
    return np.flatnonzero(np.round(r.x) > 0)


# Reduced-cost fixing: the first ILP keeps the columns whose reduced cost is within this share of the LP bound
# (MobileNetV2 / XCZU9EG, 6,800-7,400 columns at four rates: 420-570 kept, each proven lossless on the first pass)
LP_SLACK = 1e-2


def solve_ilp(p: Problem, time_limit: float | None = None, feasibility_only: bool = False,
              gap: float = ILP_GAP) -> Solution | None:
    """The optimum by mixed-integer linear programming; None when no choice fits the caps.

    ``feasibility_only``: any choice that fits (much faster; the objective is still reported).
    ``gap``: relative optimality gap at which HiGHS stops (0 for the proven optimum).

    Losslessly smaller first: the LP relaxation's duals bound what each column adds to any pick's objective
    (:func:`_lp_bound`); the ILP is solved over the columns within ``delta`` of the bound, and its answer ``U``
    stands when ``U <= B + delta`` (a pick with a left-out column costs more than ``U``); otherwise ``delta``
    grows to ``U - B`` once, and then the whole problem is solved.
    """
    t0 = time.perf_counter()
    if any(not items for items in p.items):
        return None
    m = _matrices(p, feasibility_only)
    n = len(m.col_item)

    def left() -> float | None:
        return None if time_limit is None else time_limit - (time.perf_counter() - t0)

    picked: np.ndarray | None = None
    bound = None
    if not feasibility_only:
        bound = _lp_bound(m)
    if bound is not None:
        lower, d = bound
        delta = max(LP_SLACK * max(abs(lower), 1.0), float(_layer_min(m, d).max()))  # every layer keeps a column
        for _ in range(2):
            cols = np.flatnonzero(d <= delta)
            x = _milp(m, cols, gap, left())
            if x is None:
                break
            if float(m.c[cols[x]].sum()) <= lower + delta:
                picked = cols[x]
                break
            delta = float(m.c[cols[x]].sum()) - lower
    if picked is None:
        x = _milp(m, np.arange(n), gap, left())
        if x is None:
            return None
        picked = x
    picks = [0] * len(p.items)
    for col in picked:
        picks[int(m.col_layer[col])] = m.col_item[col]
    sol = _solution(p, tuple(picks), t0, "ilp")
    return sol if _fits(sol.used, p.cap) else None


def solve_exhaustive(p: Problem, limit: int = 2_000_000) -> Solution | None:
    """The optimum by trying every combination (small problems only)."""
    t0 = time.perf_counter()
    if math.prod(len(items) for items in p.items) > limit:
        raise ValueError(f"exhaustive search over more than {limit} combinations")
    best: tuple[int, ...] | None = None
    best_obj = math.inf
    for picks in itertools.product(*(range(len(items)) for items in p.items)):
        obj = sum(items[i].sens for items, i in zip(p.items, picks, strict=True))
        if obj < best_obj - 1e-15 and _fits(_used(p, picks), p.cap):
            best, best_obj = picks, obj
    return _solution(p, best, t0, "exhaustive") if best is not None else None


def solve_greedy(p: Problem) -> Solution | None:
    """Start at every layer's least sensitive choice; while a cap is exceeded, make the swap that
    removes the most relative overflow per unit of added sensitivity."""
    t0 = time.perf_counter()
    if any(not items for items in p.items):
        return None
    cap = np.array([c if c > 0 else 1e-9 for c in p.cap])
    picks = [min(range(len(items)), key=lambda i, it=items: (it[i].sens, sum(it[i].res)))  # type: ignore[misc]
             for items in p.items]

    def over(u: np.ndarray) -> float:
        return float((np.maximum(u - cap, 0.0) / cap).sum())

    used = np.array(_used(p, tuple(picks)))
    for _ in range(100 * len(p.items) + 100):
        cur = over(used)
        if cur <= 1e-9:
            return _solution(p, tuple(picks), t0, "greedy")
        best: tuple[float, int, int] | None = None
        for li, items in enumerate(p.items):
            old = items[picks[li]]
            for i, it in enumerate(items):
                if i == picks[li]:
                    continue
                gain = cur - over(used - np.asarray(old.res) + np.asarray(it.res))
                if gain <= 1e-12:
                    continue
                score = (it.sens - old.sens) / gain
                if best is None or score < best[0]:
                    best = (score, li, i)
        if best is None:
            return None
        _, li, i = best
        used = used - np.asarray(p.items[li][picks[li]].res) + np.asarray(p.items[li][i].res)
        picks[li] = i
    return None
