"""Hardware-aware mixed-precision and mixed-scheme search (layer L5).

* :mod:`~mixq.algorithms.search.space`       — `Option` (weight bits, act bits, SP2 ratio ρ), `SearchSpace`
* :mod:`~mixq.algorithms.search.sensitivity` — HAWQ (Hutchinson trace × ‖ΔW‖², per row) and measured KL; disk cache
* :mod:`~mixq.algorithms.search.costs`       — (layer, option, folding) costs from `mixq.hw`'s engines
* :mod:`~mixq.algorithms.search.solvers`     — ILP (scipy milp), exhaustive and greedy knapsack solvers
* :mod:`~mixq.algorithms.search.allocate`    — the allocation at a frame rate, the fastest reachable design
* :mod:`~mixq.algorithms.search.evaluate`    — quantize + evaluate candidates (serial, process pool, Ray)
* :mod:`~mixq.algorithms.search.driver`      — `search_plan` → `SearchResult` (plan, Pareto front, choice)
* :mod:`~mixq.algorithms.search.greedy`      — `greedy_plan`: Tomato's cheapest arithmetic per layer (vs the ILP)
"""

from mixq.algorithms.search.allocate import Allocation, allocate, fastest, to_plan
from mixq.algorithms.search.costs import HwTable
from mixq.algorithms.search.driver import Point, SearchConfig, SearchResult, pareto_front, search_plan
from mixq.algorithms.search.evaluate import AccuracyEval, AgreementEval, evaluate_plans
from mixq.algorithms.search.greedy import GreedyConfig, GreedyResult, greedy_plan
from mixq.algorithms.search.sensitivity import Sensitivity, SensitivityConfig, sensitivity
from mixq.algorithms.search.solvers import Item, Problem, Solution, solve_exhaustive, solve_greedy, solve_ilp
from mixq.algorithms.search.space import Option, SearchSpace

__all__ = [
    "AccuracyEval", "AgreementEval", "Allocation", "GreedyConfig", "GreedyResult", "HwTable", "Item", "Option",
    "Point", "Problem", "SearchConfig", "SearchResult", "SearchSpace", "Sensitivity", "SensitivityConfig",
    "Solution", "allocate", "evaluate_plans", "fastest", "greedy_plan", "pareto_front", "search_plan",
    "sensitivity", "solve_exhaustive", "solve_greedy", "solve_ilp", "to_plan",
]
