"""The example PTQ stage, measured: percentile activation clipping (``act_percentile``, recipe
``minmax_pct``) against min-max activation ranges (recipe ``minmax``) on CNV, full Fashion-MNIST test set.

    python benchmarks/ptq_percentile.py

Calibration on the 1,000 bundled training images; every layer (first and last included) at the
weight / activation formats of the row; one thread. Writes benchmarks/results/ptq_percentile.json and .md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mixq import api, zoo
from mixq.algorithms.ptq import quantize
from mixq.formats import parse_format
from mixq.io import atomic_write_json, atomic_write_text
from mixq.tasks.data import fmnist_eval

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = (("fixed8n", "ufixed8"), ("fixed4n", "ufixed4"), ("fixed4n", "ufixed3"))


def main() -> None:
    torch.set_num_threads(1)
    model = zoo.load("cnv", pretrained=True).eval()
    x, y, calib = fmnist_eval("fmnist", calib_images=1000)
    ref = api.predict(model, x).argmax(1)
    rows = []
    for w, a in FORMATS:
        plan = api.default_plan("cnv", model, calib[:8], weight=parse_format(w), act=parse_format(a))
        for recipe in ("minmax", "minmax_pct"):
            t = time.perf_counter()
            q = quantize(model, plan, calib, recipe)
            seconds = time.perf_counter() - t
            pred = api.predict(q, x).argmax(1)
            rows.append({"weight": w, "act": a, "recipe": recipe, "seconds": round(seconds, 2),
                         "top1": round(100 * float((pred == y).float().mean()), 2),
                         "agreement": round(100 * float((pred == ref).float().mean()), 2)})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["# Percentile activation clipping, the example PTQ stage (`ptq_percentile.py`)", "",
             f"CNV on the {x.shape[0]} Fashion-MNIST test images; calibration on {calib.shape[0]} training images; "
             "every layer at the row's formats. `minmax`: activation ranges from the largest value seen; "
             "`minmax_pct`: the same recipe plus the `act_percentile` stage (99.99th percentile).", "",
             "| weights | activations | recipe | top-1 (%) | agreement with FP32 (%) | PTQ time (s) |",
             "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['weight']} | {r['act']} | {r['recipe']} | {r['top1']:.2f} | {r['agreement']:.2f} | "
              f"{r['seconds']:.2f} |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "ptq_percentile.json", {"rows": rows, "test_images": int(x.shape[0]),
                                                        "calibration_images": int(calib.shape[0])})
    atomic_write_text(RESULTS / "ptq_percentile.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
