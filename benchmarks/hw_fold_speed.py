"""How long the streaming estimate with folding optimization takes (issue 19: MobileNetV2 < 50 ms).

For CNV, ResNet-18 and MobileNetV2 at W8A8 and at MSQ W4A4 (half the rows SP2), on four parts, with
weights on chip only and with DDR weights allowed (48 cases), the CPU time of one ``mixq.hw.estimate(...,
"streaming")`` call, single thread, median of 5, three ways:

- **warm**: the call repeated (the cost model's per-PE caches and the layer caches kept across estimates —
  every layer description's candidate foldings and engines, :func:`mixq.hw.units.clear_caches` — warm), what a
  search or a second estimate of the same model pays;
- **fresh**: the layer caches cleared before each call (the cost model's per-PE caches warm), what the first
  estimate of a plan pays in a process that has priced PEs before;
- **cold** (MobileNetV2): the first estimate in a new Python process (specs and plan unpickled, no torch), every
  cache empty, what ``mixq estimate`` pays.

Every case's optimum (fits, frames/s, resources, every layer's folding, DDR layers, split) must be identical warm,
fresh and cold and equal to ``tests/golden/hw/fold_optimum.json`` (written by the optimizer before its layer
caches); with ``--baseline REV`` this tree with the optimizer's files as at git revision REV (the unoptimized path
on the same cost model; nothing in the work tree changes) runs the same cases side by side in a second process,
case by case in turn, and its optimum must be identical too. The script exits 1 on any difference.

Also side by side: the candidate costing of every layer in bulk (``engine_grid``, what the optimizer uses) against
one ``compute_engine`` call per folding (layer caches cleared), and the estimate at a folding the plan gives.

Writes benchmarks/results/hw_fold_speed.json and .md. Run: ``.venv/bin/python benchmarks/hw_fold_speed.py
--baseline 393ce18`` (393ce18: the optimizer before its layer caches; about 5 minutes on the shared 2-core
machine, without ``--baseline`` about 2).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from mixq.formats import FixedPoint, SumOfPowers  # noqa: E402
from mixq.hw import ArchOptions, estimate  # noqa: E402
from mixq.hw import units as hw_units  # noqa: E402
from mixq.hw.cost import CostModel  # noqa: E402
from mixq.hw.lower import lower  # noqa: E402
from mixq.hw.parts import get_part  # noqa: E402
from mixq.hw.units import compute_engine, divisors, engine_grid  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from mixq.plan import plan_to_dict, uniform_plan  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOLDEN = HERE.parent / "tests" / "golden" / "hw" / "fold_optimum.json"
MODELS = ("cnv", "resnet18", "mobilenet_v2")
PLANS = ("W8A8", "MSQ W4A4")
PARTS = ("xc7z020", "xc7z045", "xczu9eg", "xcvu9p")
TARGET_MS = 50.0
REPEAT = 5
COLD_REPEAT = 3


def clear_caches() -> None:
    getattr(hw_units, "clear_caches", lambda: None)()  # the code before the layer caches has none


_SPECS: dict[str, Any] = {}


def specs_of(model: str) -> Any:
    if model not in _SPECS:
        from mixq import zoo
        from mixq.graph.capture import capture

        _SPECS[model] = capture(zoo.load(model), zoo.input_shape(model))
    return _SPECS[model]


def plan_of(model: str, label: str) -> Any:
    names = [s.name for s in specs_of(model) if s.is_compute]
    a8, a4 = FixedPoint(8, signed=False), FixedPoint(4, signed=False)
    if label == "W8A8":
        return uniform_plan(model, names, FixedPoint(8), a8, signed_inputs=names[:1])
    return uniform_plan(model, names, FixedPoint(4), a4, signed_inputs=names[:1], weight_alt=SumOfPowers(4),
                        alt_ratio=0.5)


def cases() -> list[str]:
    return [f"{m}|{p}|{part}|{ddr}" for m in MODELS for p in PLANS for part in PARTS for ddr in ("never", "auto")]


def call(case: str) -> Callable[[], Any]:
    model, label, part, ddr = case.split("|")
    specs, plan, opts = specs_of(model), plan_of(model, label), ArchOptions(ddr_weights=ddr)
    return lambda: estimate(specs, plan, part, "streaming", options=opts)


def signature(e: Any) -> dict[str, Any]:
    """The optimum as ``tests/test_hw_fold_optimum.py`` pins it."""
    return {"fits": e.fits, "fps": e.fps, "resources": list(e.resources),
            "folding": " ".join(f"{ly.pe},{ly.simd}" for ly in e.layers if ly.macs > 0 and ly.pe > 0),
            "ddr_weights": list(e.ddr_weights), "segments": [len(s) for s in e.partition]}


def timed(fn: Callable[[], Any], repeat: int = REPEAT, before: Callable[[], None] | None = None) -> float:
    """Median milliseconds of ``fn``: the process's CPU time (one thread, so the wall time of a quiet machine;
    other jobs on a shared machine do not count); ``before`` runs untimed before each call."""
    ts = []
    for _ in range(repeat):
        if before is not None:
            before()
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts) * 1e3


def measure(case: str) -> dict[str, Any]:
    """Warm and fresh times of one case and its optimum (the warm and fresh results must be equal)."""
    fn = call(case)
    first = fn()
    warm = timed(fn)
    fresh = timed(fn, before=clear_caches)
    clear_caches()
    again = fn()
    return {"warm_ms": warm, "fresh_ms": fresh, "sig": signature(first),
            "same_fresh": first.to_dict() == again.to_dict() == fn().to_dict()}


# -- a second process: the baseline's code, or a cold first call -------------------------------------------------

def serve() -> None:
    """Answer ``{"case": ...}`` lines with the warm time and optimum of that case (the baseline side)."""
    for line in sys.stdin:
        case = json.loads(line)["case"]
        fn = call(case)
        e = fn()
        print(json.dumps({"warm_ms": timed(fn), "sig": signature(e)}), flush=True)


def cold(path: str) -> None:
    """Time the first estimate of a new process on pickled (specs, plan as JSON data, part, options)."""
    from mixq.plan import plan_from_dict

    with open(path, "rb") as f:
        specs, plan_dict, part, opts = pickle.load(f)
    plan = plan_from_dict(plan_dict)
    t = time.process_time()
    e = estimate(specs, plan, part, "streaming", options=opts)
    ms = (time.process_time() - t) * 1e3
    print(json.dumps({"cold_ms": ms, "sig": signature(e)}))


#: the optimizer's files: ``--baseline REV`` runs this tree with these as they were at REV
OPTIMIZER_FILES = ("hw/units.py", "hw/streaming.py", "hw/memory.py", "hw/lower.py")


def baseline_src(rev: str, into: Path) -> Path:
    """This tree's ``src/`` with :data:`OPTIMIZER_FILES` as at git revision ``rev`` (``git show``: nothing in the
    work tree or the repository changes), so the two sides differ in the optimizer only, not in the cost model."""
    src = into / "src"
    shutil.copytree(HERE.parent / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    for f in OPTIMIZER_FILES:
        old = subprocess.run(["git", "show", f"{rev}:src/mixq/{f}"], cwd=HERE.parent, check=True,
                             capture_output=True).stdout
        (src / "mixq" / f).write_bytes(old)
    return src


def child_env(src: Path | None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(src if src is not None else HERE.parent / "src")
    return env


def cold_ms(case: str, src: Path | None, tmp: Path) -> tuple[float, dict[str, Any]]:
    """Median first-call time of ``case`` over fresh processes (the code in ``src``, or this tree)."""
    model, label, part, ddr = case.split("|")
    path = tmp / "case.pkl"
    with open(path, "wb") as f:
        pickle.dump((specs_of(model), plan_to_dict(plan_of(model, label)), part, ArchOptions(ddr_weights=ddr)), f)
    runs = []
    for _ in range(COLD_REPEAT):
        out = subprocess.run([sys.executable, __file__, "--cold", str(path)], env=child_env(src), check=True,
                             capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return statistics.median(r["cold_ms"] for r in runs), runs[0]["sig"]


# -- side by side measurements ----------------------------------------------------------------------------------

def costing_ratio(model: str) -> dict[str, float]:
    """Every layer's candidate foldings at W8A8 on XC7Z020 costed in bulk vs one compute_engine call each (ms)."""
    part, cm, opts = get_part("xc7z020"), CostModel.default(), ArchOptions()
    layers = [ly for ly in lower(specs_of(model), plan_of(model, "W8A8"), part) if ly.is_compute]
    work = [(ly, [(p, d) for p in divisors(ly.spec.weight_rows) for d in divisors(ly.spec.row_length)])
            for ly in layers]

    def bulk() -> None:
        for ly, pairs in work:
            engine_grid(ly, [p for p, _ in pairs], [d for _, d in pairs], part, cm, opts)

    def one_by_one() -> None:
        for ly, pairs in work:
            for p, d in pairs:
                compute_engine(ly, p, d, part, cm, opts)

    b, s = timed(bulk, 3), timed(one_by_one, 3, before=clear_caches)
    return {"foldings": sum(len(p) for _, p in work), "bulk_ms": round(b, 1), "per_folding_ms": round(s, 1),
            "speedup": round(s / b, 2)}


def given_folding() -> dict[str, float]:
    """MobileNetV2 at W4A4 with every layer's folding given by the plan (2 x 3): no optimization."""
    from mixq.plan import HwMapping, LayerPlan, QuantPlan

    specs = specs_of("mobilenet_v2")
    w, a = FixedPoint(4), FixedPoint(4, signed=False)
    plan = QuantPlan("mobilenet_v2", {s.name: LayerPlan(weight=w, act=a, mapping=HwMapping(pe=2, simd=3))
                                      for s in specs if s.is_compute})

    def fn() -> Any:
        return estimate(specs, plan, "xc7z045", fold="plan")

    fn()
    return {"warm_ms": round(timed(fn), 1), "fresh_ms": round(timed(fn, before=clear_caches), 1)}


def main(rev: str | None) -> int:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        src = baseline_src(rev, tmp) if rev else None
        server = None
        if src is not None:
            server = subprocess.Popen([sys.executable, __file__, "--serve"], env=child_env(src), text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            for case in cases():
                model, label, part, ddr = case.split("|")
                row: dict[str, Any] = {"model": model, "plan": label, "part": part, "ddr_weights": ddr}
                if server is not None:  # the baseline first, then this code, case by case
                    assert server.stdin is not None and server.stdout is not None
                    server.stdin.write(json.dumps({"case": case}) + "\n")
                    server.stdin.flush()
                    base = json.loads(server.stdout.readline())
                m = measure(case)
                sig = m["sig"]
                row.update(fits=sig["fits"], fps=round(sig["fps"], 1), warm_ms=round(m["warm_ms"], 1),
                           fresh_ms=round(m["fresh_ms"], 1), same_fresh=m["same_fresh"],
                           same_golden=(golden.get(f"{case}|1|-") == sig) if golden else None)
                if server is not None:
                    row.update(baseline_ms=round(base["warm_ms"], 1), same_baseline=base["sig"] == sig)
                if model == "mobilenet_v2":
                    c, csig = cold_ms(case, None, tmp)
                    row.update(cold_ms=round(c, 1), same_cold=csig == sig)
                    if src is not None:
                        bc, bsig = cold_ms(case, src, tmp)
                        row.update(baseline_cold_ms=round(bc, 1), same_baseline_cold=bsig == sig)
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        finally:
            if server is not None:
                server.terminate()
                server.wait()
    costing = {}
    for model in MODELS:
        costing[model] = costing_ratio(model)
        print(f"{model}: candidate costing {costing[model]}", flush=True)
    checks = [k for k in ("same_fresh", "same_golden", "same_cold", "same_baseline", "same_baseline_cold")
              if any(k in r and r[k] is not None for r in rows)]
    differ = {k: sum(1 for r in rows if k in r and r[k] is False) for k in checks}
    doc = {"target_ms": TARGET_MS, "baseline": rev, "rows": rows, "costing": costing, "checks": differ,
           "summary": summary(rows), "given_folding": given_folding()}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "hw_fold_speed.json", doc)
    atomic_write_text(RESULTS / "hw_fold_speed.md", markdown(doc))
    print(json.dumps(doc["summary"], indent=1), "\nresults that differ:", differ)
    return 1 if any(differ.values()) else 0


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in MODELS:
        mine = [r for r in rows if r["model"] == model]
        s: dict[str, Any] = {}
        for k in ("warm_ms", "fresh_ms", "cold_ms", "baseline_ms", "baseline_cold_ms"):
            v = [r[k] for r in mine if k in r]
            if v:
                s[k] = {"median": round(statistics.median(v), 1), "max": max(v),
                        "under_target": sum(x < TARGET_MS for x in v), "cases": len(v)}
        if "baseline_ms" in s:
            ratios = [r["baseline_ms"] / r["warm_ms"] for r in mine]
            fresh = [r["baseline_ms"] / r["fresh_ms"] for r in mine]
            s["speedup_warm"] = {"median": round(statistics.median(ratios), 2), "min": round(min(ratios), 2)}
            s["speedup_fresh"] = {"median": round(statistics.median(fresh), 2), "min": round(min(fresh), 2)}
        if "baseline_cold_ms" in s:
            cold = [r["baseline_cold_ms"] / r["cold_ms"] for r in mine]
            s["speedup_cold"] = {"median": round(statistics.median(cold), 2), "min": round(min(cold), 2)}
        out[model] = s
    return out


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]["mobilenet_v2"]
    base = doc["baseline"]

    def fig(k: str) -> str:
        x = s.get(k)
        return f"median {x['median']:.1f} ms, worst {x['max']:.1f} ms, {x['under_target']}/{x['cases']} under " \
               f"{doc['target_ms']:.0f} ms" if x else "not measured"

    lines = ["# Streaming estimate with folding optimization: time", "",
             "One `mixq.hw.estimate(..., \"streaming\")` call with the folding optimized, CPU time of the one "
             "thread (other load on the shared machine does not count), median of 5: **warm** = the call repeated "
             "(layer caches warm), **fresh** = the layer caches (`mixq.hw.units.clear_caches`) cleared before each "
             "call, the cost model's per-PE caches warm; **cold** = the first estimate in a new process (median of "
             "3 processes). `benchmarks/hw_fold_speed.py" + (f" --baseline {base}" if base else "") + "`.", "",
             "MobileNetV2, 16 cases:", "",
             f"- warm: {fig('warm_ms')}",
             f"- fresh: {fig('fresh_ms')}",
             f"- cold: {fig('cold_ms')}"]
    if base:
        lines += [f"- the optimizer of {base} (this tree with {', '.join(OPTIMIZER_FILES)} as at {base}), side by "
                  f"side in a second process, case by case in turn (warm, as its benchmark measured it): "
                  f"{fig('baseline_ms')}; cold: {fig('baseline_cold_ms')}",
                  f"- speed-up over {base}: warm {s['speedup_warm']['median']}x (least {s['speedup_warm']['min']}x), "
                  f"fresh {s['speedup_fresh']['median']}x (least {s['speedup_fresh']['min']}x), cold "
                  f"{s['speedup_cold']['median']}x (least {s['speedup_cold']['min']}x)"]
    g = doc["given_folding"]
    lines += [f"- at a folding the plan gives (no optimization): warm {g['warm_ms']} ms, fresh {g['fresh_ms']} ms",
              "", "Identical optimum (fits, FPS, resources, every layer's folding, DDR layers, split), cases that "
              "differ: " + ", ".join(f"{k.replace('same_', '')} {v}" for k, v in doc["checks"].items())
              + " (fresh: warm vs fresh; golden: `tests/golden/hw/fold_optimum.json`, written by the optimizer "
              "before its layer caches; cold: the first call of a new process; baseline: the optimizer of "
              + str(base) + ", warm and cold).", ""]
    head = "| model | plan | part | DDR weights | fits | FPS | warm ms | fresh ms |"
    rule = "|---|---|---|---|---|---:|---:|---:|"
    if base:
        head += f" {base} ms | speed-up (warm / fresh) |"
        rule += "---:|---:|"
    head += " cold ms |" + (f" {base} cold ms |" if base else "")
    rule += "---:|" + ("---:|" if base else "")
    lines += [head, rule]
    for r in doc["rows"]:
        line = (f"| {r['model']} | {r['plan']} | {r['part']} | {r['ddr_weights']} | {'yes' if r['fits'] else 'no'} "
                f"| {r['fps']:,.1f} | {r['warm_ms']:.1f} | {r['fresh_ms']:.1f} |")
        if base:
            line += (f" {r['baseline_ms']:.1f} | {r['baseline_ms'] / r['warm_ms']:.1f}x / "
                     f"{r['baseline_ms'] / r['fresh_ms']:.1f}x |")
        line += f" {r['cold_ms']:.1f} |" if "cold_ms" in r else " |"
        if base:
            line += f" {r['baseline_cold_ms']:.1f} |" if "baseline_cold_ms" in r else " |"
        lines.append(line)
    lines += ["", "Candidate costing, side by side in the same run (every layer's foldings at W8A8 on XC7Z020; the "
              "per-folding calls with the layer caches cleared):", "",
              "| model | foldings | bulk (`engine_grid`) ms | one `compute_engine` per folding ms | speed-up |",
              "|---|---:|---:|---:|---:|"]
    for model, c in doc["costing"].items():
        lines.append(f"| {model} | {c['foldings']:,} | {c['bulk_ms']} | {c['per_folding_ms']} | {c['speedup']}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", metavar="REV", help="also run the optimizer of git revision REV side by side")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cold", metavar="PKL", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve()
    elif a.cold:
        cold(a.cold)
    else:
        sys.exit(main(a.baseline))
