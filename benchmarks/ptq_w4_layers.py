"""Where MobileNetV2's 4-bit weights lose fidelity: one layer at a time, and the whole network with and without
its most sensitive layer.

Run: ``.venv/bin/python benchmarks/ptq_w4_layers.py`` (one thread, ~20 min; ``--step 40`` for a smoke run).
Data as ``ptq_mobilenetv2.py --lowbit`` (its cached 2,000-input fidelity set and 256 calibration crops), every
``--step``-th fidelity input (default 8: 250 inputs). Weights only: every activation stays float.

Rows: (1) each layer but the first and last alone at 4 bits (the W4A8 rows' format, fixed-point per channel,
GPTQ), every other layer float; (2) every layer at 4 bits, GPTQ; the same with the most sensitive layer of (1)
at 8 bits; each with and without empirical bias correction. Writes ``benchmarks/results/ptq_w4_layers.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixq.algorithms.ptq import quantize_report  # noqa: E402
from mixq.data.fidelity import normalize  # noqa: E402
from mixq.formats import parse_format  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from mixq.plan import QuantPlan  # noqa: E402
from ptq_common import fidelity, logits  # noqa: E402
from ptq_error_budget import only  # noqa: E402
from ptq_mobilenetv2 import lowbit_data, lowbit_plans  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=8, help="every STEP-th fidelity input (8: 250 inputs)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, fs, calib = lowbit_data()
    x = normalize(fs.x)[:: args.step]
    ref = logits(model, x, 16)
    plan = lowbit_plans(model, calib[:8])["w4a8"]
    names = list(plan.layers)

    def measure(p: QuantPlan, **kw: Any) -> dict[str, float]:
        t = time.perf_counter()
        q = quantize_report(model, p, calib, "gptq", **kw).model
        agree, sq = fidelity(ref, logits(q, x, 16))
        return {"agreement": round(agree, 2), "sqnr_db": round(sq, 2), "seconds": round(time.perf_counter() - t, 1)}

    per_layer = {}
    for n in names[1:-1]:
        per_layer[n] = measure(only(plan, True, False, weight_layers={n}))
        print(f"{n:28s} {per_layer[n]}", flush=True)
    worst = min(per_layer, key=lambda n: per_layer[n]["sqnr_db"])
    w8 = plan.with_layer(worst, plan[worst].with_(weight=parse_format("fixed8n"), weight_alt=None, alt_ratio=0.0))
    bc = {"bias_correction": "empirical"}
    whole = []
    for label, p, kw in ((f"{worst} alone at 4 bits + BC", only(plan, True, False, weight_layers={worst}), bc),
                         ("every layer at 4 bits", only(plan, True, False), {}),
                         ("every layer at 4 bits + BC", only(plan, True, False), bc),
                         (f"every layer at 4 bits but {worst} (8 bits)", only(w8, True, False), {}),
                         (f"every layer at 4 bits but {worst} (8 bits) + BC", only(w8, True, False), bc)):
        whole.append({"config": label, **measure(p, **kw)})
        print(whole[-1], flush=True)
    result = {"benchmark": "ptq_w4_layers", "command": "python benchmarks/ptq_w4_layers.py"
              + (f" --step {args.step}" if args.step != 8 else ""), "fidelity_inputs": int(x.shape[0]),
              "torch": torch.__version__, "threads": 1, "date": time.strftime("%Y-%m-%d"), "per_layer": per_layer,
              "whole": whole, "worst": worst}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "ptq_w4_layers.json", result)
    top = sorted(per_layer, key=lambda n: per_layer[n]["sqnr_db"])[:10]
    md = ["## MobileNetV2: where 4-bit weights lose fidelity (`benchmarks/ptq_w4_layers.py`)", "",
          f"Command: `{result['command']}`; {result['fidelity_inputs']} of the 2,000 fidelity inputs, 256 "
          "calibration crops, activations float, fixed-point 4-bit per-channel weights by GPTQ (the W4A8 rows' "
          "format; first and last layer at 8 bits).", "",
          "| layer alone at 4 bits (all else float) | agreement (%) | logit SQNR (dB) |", "|---|---:|---:|"]
    md += [f"| {n} | {per_layer[n]['agreement']:.2f} | {per_layer[n]['sqnr_db']:.2f} |" for n in top]
    md += ["", f"(the 10 costliest of {len(per_layer)} layers)", "",
           "| whole network | agreement (%) | logit SQNR (dB) |", "|---|---:|---:|"]
    md += [f"| {r['config']} | {r['agreement']:.2f} | {r['sqnr_db']:.2f} |" for r in whole]
    atomic_write_text(args.out / "ptq_w4_layers.md", "\n".join(md) + "\n")
    print("written", flush=True)


if __name__ == "__main__":
    main()
