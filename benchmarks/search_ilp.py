"""ILP solve time of the search on MobileNetV2 (issue 8: "the ILP for MobileNetV2 solves in under 2 s").

For MobileNetV2 on an XCZU9EG (53 compute layers; weight bits 3-8, activation bits 4/6/8, SP2
ratios 0/0.5/1, every folding that meets the frame rate) the allocation problem is built at four
frame rates (the fastest reachable one and 70%, 50%, 25% of it) and solved by the ILP at the
default 1% gap, at 0.1%, at the proven optimum (gap 0), and by the greedy solver; objective
(summed sensitivity, lower is better) and seconds for each, side by side in one run.

    python benchmarks/search_ilp.py

Writes benchmarks/results/search_ilp.json and search_ilp.md.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mixq import api
from mixq.algorithms.search import HwTable, SearchSpace, SensitivityConfig, sensitivity
from mixq.algorithms.search.allocate import fastest, problem_at
from mixq.algorithms.search.solvers import ILP_GAP, solve_greedy, solve_ilp
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.io import atomic_write_json, atomic_write_text
from mixq.tasks.search import bundled_task

OUT = Path(__file__).parent / "results"
PART = "xczu9eg"


def main() -> None:
    torch.set_num_threads(1)
    model, calib, _ = bundled_task("mobilenet_v2", True, 32, 8)
    folded = fold_bn(model).eval()
    specs = capture(folded, tuple(calib.shape[1:]))
    signed = sorted(api.signed_inputs(folded, calib[:16]))
    space = SearchSpace(wbits=(3, 4, 5, 6, 8), abits=(4, 6, 8))
    t0 = time.perf_counter()
    sens = sensitivity(folded, calib, space, signed, SensitivityConfig(images=8, hutchinson_samples=2),
                       "mobilenet_v2")
    t_sens = time.perf_counter() - t0
    table = HwTable(specs, space.options(), PART, signed)
    t0 = time.perf_counter()
    best = fastest(table, sens)
    t_fastest = time.perf_counter() - t0
    assert best is not None
    fps_max = best.fps(table)
    rows: list[dict[str, Any]] = []
    for frac in (1.0, 0.7, 0.5, 0.25):
        t0 = time.perf_counter()
        prob, _ = problem_at(table, sens, table.cycles_for(fps_max * frac))
        row: dict[str, Any] = {"fps": round(fps_max * frac, 1), "layers": len(prob.items),
                               "items": sum(len(i) for i in prob.items), "build_s": round(time.perf_counter() - t0, 3)}
        for key, gap, limit in (("ilp_1pct", ILP_GAP, None), ("ilp_0.1pct", 1e-3, None), ("ilp_opt", 0.0, 120.0)):
            t0 = time.perf_counter()
            sol = solve_ilp(prob, gap=gap, time_limit=limit)
            row[key] = {"s": round(time.perf_counter() - t0, 3), "objective": None if sol is None else sol.objective}
        t0 = time.perf_counter()
        g = solve_greedy(prob)
        row["greedy"] = {"s": round(time.perf_counter() - t0, 3), "objective": None if g is None else g.objective}
        print(row, flush=True)
        rows.append(row)
    result = {"model": "mobilenet_v2", "part": PART, "layers": len(table.names), "options": len(space.options()),
              "sensitivity_s": round(t_sens, 1), "fastest_s": round(t_fastest, 1), "fastest_fps": round(fps_max, 1),
              "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
              "load_average_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count(), "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "search_ilp.json", result)

    def cell(d: dict[str, Any]) -> str:
        return "no solution" if d["objective"] is None else f"{d['s']:.2f} s / {d['objective']:.4g}"

    lines = ["# Search ILP on MobileNetV2 (`benchmarks/search_ilp.py`)", "",
             f"{result['layers']} compute layers x {result['options']} options x foldings on {PART}; "
             f"sensitivity (HAWQ, 8 images) {result['sensitivity_s']} s; fastest reachable {result['fastest_fps']} "
             f"FPS found by bisection in {result['fastest_s']} s. Cells: solve time / objective (summed "
             f"sensitivity, lower is better). {result['machine']}; load average {result['load_average_1min']} on "
             f"{result['cores']} cores at the end of the run.", "",
             "| frame rate | items (after build) | build | ILP 1% gap (default) | ILP 0.1% gap | ILP optimum "
             "(gap 0, 120 s limit) | greedy |", "|---:|---:|---:|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fps']} | {r['items']} | {r['build_s']:.2f} s | {cell(r['ilp_1pct'])} | "
                     f"{cell(r['ilp_0.1pct'])} | {cell(r['ilp_opt'])} | {cell(r['greedy'])} |")
    atomic_write_text(OUT / "search_ilp.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
