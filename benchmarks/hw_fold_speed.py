"""How long the streaming estimate with folding optimization takes (issue 19: MobileNetV2 < 50 ms).

For CNV, ResNet-18 and MobileNetV2 at W8A8 and at MSQ W4A4 (half the rows SP2), on four parts, with
weights on chip only and with DDR weights allowed: the wall time of one ``mixq.hw.estimate(...,
"streaming")`` call (the cost model's caches warm, median of 5 CPU times), single thread. Side by side in the
same run: the candidate costing of every layer in bulk (``engine_grid``, what the optimizer uses)
against one ``compute_engine`` call per folding (what it used before), and their ratio.

Writes benchmarks/results/hw_fold_speed.json and .md. Run: ``.venv/bin/python benchmarks/hw_fold_speed.py``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from mixq import zoo  # noqa: E402
from mixq.formats import FixedPoint, SumOfPowers  # noqa: E402
from mixq.graph.capture import capture  # noqa: E402
from mixq.hw import ArchOptions, estimate  # noqa: E402
from mixq.hw.cost import CostModel  # noqa: E402
from mixq.hw.lower import lower  # noqa: E402
from mixq.hw.parts import get_part  # noqa: E402
from mixq.hw.units import compute_engine, divisors, engine_grid  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from mixq.plan import uniform_plan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("cnv", "resnet18", "mobilenet_v2")
PARTS = ("xc7z020", "xc7z045", "xczu9eg", "xcvu9p")
TARGET_MS = 50.0


def plans(model: str, names: list[str]) -> dict[str, Any]:
    a8, a4 = FixedPoint(8, signed=False), FixedPoint(4, signed=False)
    return {"W8A8": uniform_plan(model, names, FixedPoint(8), a8, signed_inputs=names[:1]),
            "MSQ W4A4": uniform_plan(model, names, FixedPoint(4), a4, signed_inputs=names[:1],
                                     weight_alt=SumOfPowers(4), alt_ratio=0.5)}


def timed(fn: Any, repeat: int = 5) -> float:
    """Median milliseconds of ``fn``: the process's CPU time (one thread, so the wall time of a quiet machine;
    other jobs on a shared machine do not count)."""
    ts = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts) * 1e3


def costing_ratio(specs: list[Any], plan: Any, part_name: str) -> dict[str, float]:
    """Every layer's candidate foldings costed in bulk vs one compute_engine call each (ms, ratio)."""
    part, cm, opts = get_part(part_name), CostModel.default(), ArchOptions()
    layers = [ly for ly in lower(specs, plan, part) if ly.is_compute]
    work = [(ly, [(p, d) for p in divisors(ly.spec.weight_rows) for d in divisors(ly.spec.row_length)])
            for ly in layers]

    def bulk() -> None:
        for ly, pairs in work:
            engine_grid(ly, [p for p, _ in pairs], [d for _, d in pairs], part, cm, opts)

    def one_by_one() -> None:
        for ly, pairs in work:
            for p, d in pairs:
                compute_engine(ly, p, d, part, cm, opts)

    b, s = timed(bulk, 3), timed(one_by_one, 3)
    return {"foldings": sum(len(p) for _, p in work), "bulk_ms": round(b, 1), "per_folding_ms": round(s, 1),
            "speedup": round(s / b, 2)}


def given_folding_ms() -> float:
    """MobileNetV2 at W4A4 with every layer's folding given by the plan (2 x 3): no optimization."""
    from mixq.plan import HwMapping, LayerPlan, QuantPlan

    specs = capture(zoo.load("mobilenet_v2"), zoo.input_shape("mobilenet_v2"))
    w, a = FixedPoint(4), FixedPoint(4, signed=False)
    plan = QuantPlan("mobilenet_v2", {s.name: LayerPlan(weight=w, act=a, mapping=HwMapping(pe=2, simd=3))
                                      for s in specs if s.is_compute})
    estimate(specs, plan, "xc7z045", fold="plan")
    return round(timed(lambda: estimate(specs, plan, "xc7z045", fold="plan")), 1)


def main() -> dict[str, Any]:
    rows = []
    ratio = {}
    for model in MODELS:
        specs = capture(zoo.load(model), zoo.input_shape(model))
        names = [s.name for s in specs if s.is_compute]
        for label, plan in plans(model, names).items():
            for part in PARTS:
                for ddr in ("never", "auto"):
                    opts = ArchOptions(ddr_weights=ddr)
                    e = estimate(specs, plan, part, "streaming", options=opts)  # warms the caches
                    ms = timed(lambda: estimate(specs, plan, part, "streaming", options=opts))  # noqa: B023
                    rows.append({"model": model, "plan": label, "part": part, "ddr_weights": ddr, "ms": round(ms, 1),
                                 "fits": e.fits, "fps": round(e.fps, 1)})
                    print(f"{model:13s} {label:9s} {part:8s} ddr={ddr:5s} {ms:7.1f} ms  fits={e.fits} "
                          f"fps={e.fps:.1f}", flush=True)
        ratio[model] = costing_ratio(specs, plans(model, names)["W8A8"], "xc7z020")
        print(f"{model}: candidate costing {ratio[model]}", flush=True)
    mnv2 = [r["ms"] for r in rows if r["model"] == "mobilenet_v2"]
    doc = {"target_ms": TARGET_MS, "rows": rows, "costing": ratio,
           "mobilenet_v2": {"median_ms": statistics.median(mnv2), "max_ms": max(mnv2),
                            "given_folding_ms": given_folding_ms()}}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "hw_fold_speed.json", doc)
    atomic_write_text(RESULTS / "hw_fold_speed.md", markdown(doc))
    return doc


def markdown(doc: dict[str, Any]) -> str:
    m = doc["mobilenet_v2"]
    lines = ["# Streaming estimate with folding optimization: wall time", "",
             "One `mixq.hw.estimate(..., \"streaming\")` call (folding optimized; cost model caches warm; median "
             "of 5 CPU times of the one thread, so other load on the machine does not count). "
             "`benchmarks/hw_fold_speed.py`.", "",
             f"MobileNetV2: median **{m['median_ms']:.0f} ms**, worst {m['max_ms']:.0f} ms over "
             f"{sum(r['model'] == 'mobilenet_v2' for r in doc['rows'])} cases (target < {doc['target_ms']:.0f} ms); "
             f"at a folding the plan gives (no optimization) {m['given_folding_ms']:.0f} ms.",
             "", "| model | plan | part | DDR weights | ms | fits | FPS |", "|---|---|---|---|---:|---|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['plan']} | {r['part']} | {r['ddr_weights']} | {r['ms']:.1f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['fps']:,.1f} |")
    lines += ["", "Candidate costing, side by side in the same run (every layer's foldings at W8A8 on XC7Z020):", "",
              "| model | foldings | bulk (`engine_grid`) ms | one `compute_engine` per folding ms | speed-up |",
              "|---|---:|---:|---:|---:|"]
    for model, c in doc["costing"].items():
        lines.append(f"| {model} | {c['foldings']:,} | {c['bulk_ms']} | {c['per_folding_ms']} | {c['speedup']}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
