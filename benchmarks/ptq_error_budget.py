"""Where MobileNetV2's W8A8 fidelity goes: weights alone, activations alone, and each activation.

Run: ``.venv/bin/python benchmarks/ptq_error_budget.py`` (one thread, ~25 min; ``--quick``: 40
fidelity inputs, 8 layers). Same data as ``ptq_mobilenetv2.py`` (240 fidelity inputs, 256
calibration crops). Writes ``benchmarks/results/ptq_error_budget.json`` and ``.md``.

Rows: 8-bit weights with float activations (per-channel, per-tensor + CLE; with and without
bias correction), 8-bit per-tensor activations with float weights (plain, after DFQ's CLE, after
the dfq recipes' equalization: activation-aware CLE and residual streams), then one activation
quantizer at a time (every other layer float) on the first 40 fidelity inputs, sorted by the logit
SQNR it costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Collection
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixq.algorithms.ptq import quantize_report  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from mixq.plan import QuantPlan  # noqa: E402
from ptq_common import fidelity, logits, make_plan  # noqa: E402
from ptq_mobilenetv2 import load_data  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def only(plan: QuantPlan, weights: bool, acts: bool, act_layer: str | None = None,
         weight_layers: Collection[str] | None = None) -> QuantPlan:
    """``plan`` with weights and/or activations kept in float (``act_layer``: only that layer's input;
    ``weight_layers``: only those layers' weights)."""
    def keep_w(n: str) -> bool:
        return weights and (weight_layers is None or n in weight_layers)
    return QuantPlan(model=plan.model, layers={
        n: dataclasses.replace(lp, act=lp.act if acts and act_layer in (None, n) else None,
                               **({} if keep_w(n) else {"weight": None, "weight_alt": None, "alt_ratio": 0.0}))
        for n, lp in plan.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _, _, x_eval, calib = load_data(args.quick)
    ref = logits(model, x_eval, 8)
    w8c = make_plan("mobilenet_v2", model, calib[:8], "fixed8n", "channel")
    w8t = make_plan("mobilenet_v2", model, calib[:8], "fixed8n", "tensor")
    eq = {"cle": True, "cle_act_weight": 0.5, "stream_equalize": True}  # the dfq recipes' equalization
    bc = {"bias_correction": "empirical"}
    configs = [
        ("W8 per-channel, float activations", only(w8c, True, False), {}),
        ("W8 per-channel + BC, float activations", only(w8c, True, False), bc),
        ("W8 per-tensor + CLE (DFQ's rule), float activations", only(w8t, True, False), {"cle": True}),
        ("W8 per-tensor + CLE (DFQ's rule) + BC, float activations", only(w8t, True, False), {"cle": True, **bc}),
        ("A8 per-tensor after CLE (DFQ's rule), float weights", only(w8c, False, True), {"cle": True}),
        ("A8 per-tensor, float weights", only(w8c, False, True), {}),
        ("A8 per-tensor after activation-aware CLE + residual streams, float weights", only(w8c, False, True), eq),
        ("W8A8 per-tensor + activation-aware CLE + residual streams + BC (dfq_empirical)", w8t, {**eq, **bc}),
    ]
    rows = []
    for label, plan, kw in configs:
        t = time.perf_counter()
        q = quantize_report(model, plan, calib, "minmax", **kw).model
        agree, sq = fidelity(ref, logits(q, x_eval, 8))
        rows.append({"config": label, "agreement": round(agree, 2), "sqnr_db": round(sq, 2),
                     "seconds": round(time.perf_counter() - t, 1)})
        print(f"{label:62s} {agree:6.2f}% {sq:6.2f} dB", flush=True)

    x_small, ref_small = x_eval[:40], ref[:40]
    names = list(w8c.layers)[: 8 if args.quick else None]
    per_layer = []
    for kw, tag in (({}, "plain"), (eq, "equalized")):
        for n in names:
            q = quantize_report(model, only(w8c, False, True, n), calib, "minmax", **kw).model
            agree, sq = fidelity(ref_small, logits(q, x_small, 8))
            per_layer.append({"layer": n, "prep": tag, "act": str(w8c.layers[n].act), "agreement": round(agree, 2),
                              "sqnr_db": round(sq, 2)})
        print(f"  per-layer sweep ({tag}) done", flush=True)

    result = {"benchmark": "ptq_error_budget", "command": "python benchmarks/ptq_error_budget.py"
              + (" --quick" if args.quick else ""), "fidelity_inputs": int(x_eval.shape[0]),
              "calibration_inputs": int(calib.shape[0]), "torch": torch.__version__, "threads": 1,
              "date": time.strftime("%Y-%m-%d"), "rows": rows, "per_layer": per_layer}
    suffix = "_quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"ptq_error_budget{suffix}.json", result)
    md = ["## MobileNetV2 W8A8 error budget (`benchmarks/ptq_error_budget.py`)", "",
          f"Command: `{result['command']}`; {result['fidelity_inputs']} fidelity inputs, "
          f"{result['calibration_inputs']} calibration crops, torch {torch.__version__}, one thread.", "",
          "| config | top-1 agreement w/ FP32 (%) | logit SQNR (dB) |", "|---|---:|---:|"]
    md += [f"| {r['config']} | {r['agreement']:.2f} | {r['sqnr_db']:.2f} |" for r in rows]
    plain = {r["layer"]: r for r in per_layer if r["prep"] == "plain"}
    smooth = {r["layer"]: r for r in per_layer if r["prep"] == "equalized"}
    worst = sorted(plain, key=lambda n: plain[n]["sqnr_db"])[:12]
    md += ["", "One 8-bit per-tensor activation quantizer at a time (all else float), first 40 fidelity inputs, "
           "the 12 costliest without equalization:", "",
           "| layer (its input) | format | SQNR plain (dB) | SQNR after dfq equalization (dB) |", "|---|---|---:|---:|"]
    md += [f"| {n} | {plain[n]['act']} | {plain[n]['sqnr_db']:.2f} | {smooth[n]['sqnr_db']:.2f} |" for n in worst]
    atomic_write_text(args.out / f"ptq_error_budget{suffix}.md", "\n".join(md) + "\n")
    print("written", flush=True)


if __name__ == "__main__":
    main()
