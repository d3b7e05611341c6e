"""Block reconstruction (BRECQ + QDrop) against GPTQ and AdaRound on CNV below 8 bits, on one device.

CNV (the bundled trained model), calibrated on the 1,000 shipped training images, judged on the
10,000 Fashion-MNIST test images: top-1 agreement with FP32 and accuracy, with the paired 95% CI of
each row's agreement against GPTQ's (same images), and wall time per recipe. Rows: W4A4, W2A4 and W4A8
(fixed point, narrow weights), each with round-to-nearest (``minmax``), GPTQ, AdaRound and BRECQ, and with
``--recipes`` GPTQ or BRECQ followed by network-wise distillation (``gptq+distill``, ``brecq+distill``).

Run: ``.venv/bin/python benchmarks/ptq_brecq.py [--device cuda] [--fmnist DIR] [--recipes gptq,gptq+distill]``
(``DIR``: the Fashion-MNIST
idx files; default the Debian package's). Writes benchmarks/results/ptq_brecq_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq import data, zoo
from mixq.algorithms.ptq import BrecqConfig, DistillConfig, quantize_report
from mixq.data.sources import CALIB_PATH
from mixq.formats import FixedPoint
from mixq.graph import capture
from mixq.io import atomic_write_json, atomic_write_text
from mixq.plan import uniform_plan

RESULTS = Path(__file__).resolve().parent / "results"


def paired_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Difference of two agreement rates on the same images (points) and its 95% half-width."""
    d = a.astype(float) - b.astype(float)
    return 100 * float(d.mean()), 100 * 1.96 * float(d.std(ddof=1)) / math.sqrt(len(d))


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fmnist", default=None)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--widths", default="4x4,2x4,4x8", help="weight x activation bits, comma separated")
    ap.add_argument("--recipes", default="minmax,gptq,adaround,brecq")
    ap.add_argument("--test-images", type=int, default=10000)
    args = ap.parse_args()
    widths = [tuple(int(v) for v in w.split("x")) for w in args.widths.split(",")]
    torch.manual_seed(0)
    model = zoo.load("cnv", pretrained=True).eval()
    xt, yt = data.load_fashion_mnist("test", root=args.fmnist)
    x, y = data.normalize_gray(xt[: args.test_images]), torch.as_tensor(yt[: args.test_images])
    calib = data.normalize_gray(data.load_fmnist_subset(CALIB_PATH)[0])
    names = [s.name for s in capture(model, (1, 28, 28)) if s.is_compute]
    with torch.no_grad():
        ref = model(x).argmax(1)
    rows: list[dict[str, Any]] = []
    for wb, ab in widths:
        plan = uniform_plan("cnv", names, FixedPoint(wb, narrow=True), FixedPoint(ab, signed=False),
                            signed_inputs=names[:1])
        hits: dict[str, np.ndarray] = {}
        bq = BrecqConfig(iterations=args.iterations, images=1000, device=args.device)
        kd = DistillConfig(images=1000, device=args.device)
        every: dict[str, tuple[str, dict[str, Any]]] = {
            "minmax": ("minmax", {}), "gptq": ("gptq", {}), "adaround": ("adaround", {}),
            "brecq": ("brecq", {"brecq": bq}),
            # then network-wise distillation (biases, row scales, activation steps on the float prediction)
            "gptq+distill": ("gptq", {"distill": kd}), "brecq+distill": ("brecq", {"brecq": bq, "distill": kd})}
        wanted = args.recipes.split(",")
        unknown = [k for k in wanted if k not in every]
        if unknown:
            raise SystemExit(f"--recipes: {', '.join(unknown)} not one of {', '.join(every)}")
        recipes = {k: every[k] for k in wanted}
        for rec, (name, kw) in recipes.items():
            t = time.perf_counter()
            q = quantize_report(model, plan, calib, name, **kw).model
            dt = time.perf_counter() - t
            with torch.no_grad():
                p = q(x).argmax(1)
            hits[rec] = (p == ref).numpy()
            rows.append({"formats": f"W{wb}A{ab}", "recipe": rec, "agreement": round(100 * float(hits[rec].mean()), 2),
                         "accuracy": round(100 * float((p == y).float().mean()), 2), "seconds": round(dt, 1)})
            print(rows[-1], flush=True)
        for r in rows[-len(recipes):]:
            if "gptq" in hits:
                d, h = paired_ci(hits[r["recipe"]], hits["gptq"])
                r["vs_gptq"] = f"{d:+.2f} ± {h:.2f}"
    doc = {"device": args.device, "torch": torch.__version__, "iterations": args.iterations,
           "test_images": int(x.shape[0]), "calib_images": int(calib.shape[0]), "rows": rows}
    tag = args.device.split(":")[0]
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"ptq_brecq_{tag}.json", doc)
    lines = [f"# CNV below 8 bits: block reconstruction vs GPTQ / AdaRound ({tag})", "",
             f"{doc['test_images']:,} Fashion-MNIST test images, {doc['calib_images']:,} calibration images; BRECQ "
             f"{args.iterations} iterations per block on `{args.device}`. `benchmarks/ptq_brecq.py`.", "",
             "| formats | recipe | agreement (%) | vs GPTQ (points, 95% CI) | accuracy (%) | seconds |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['formats']} | {r['recipe']} | {r['agreement']:.2f} | {r['vs_gptq']} | {r['accuracy']:.2f} | "
              f"{r['seconds']:.1f} |" for r in rows]
    atomic_write_text(RESULTS / f"ptq_brecq_{tag}.md", "\n".join(lines) + "\n")
    return doc


if __name__ == "__main__":
    main()
