"""Quantized residual streams (the plan's ``residual_bits``): what they cost in fidelity and save in hardware.

Two tables:

* **MobileNetV2, real weights, W8A8 per channel**: top-1 agreement with FP32 and logit SQNR on the 2,000-view
  fidelity set (``mixq.data.fidelity``, disjoint by photo from the 256 calibration crops), for two recipes
  (``minmax``, ``dfq_empirical``) with exact streams (``residual_bits`` unset: the default) and with the streams at
  8 and 12 bits, each beside the exact row of its recipe with the paired 95% CI. MobileNetV2's streams are signed
  (no ReLU after its adds), so the stream quantizers are signed too.
* **ResNet-20 (the zoo's, 32 x 32, W8A8, seeded weights) as the whole-network RTL lowers it**: the widest buffer
  and the buffer memory (``rtl.frames``) with exact streams and with 8-bit streams, and the rings and frame
  buffers. No simulation here: ``mixq rtl build`` measures the same design (benchmarks/README "Residual streams").

Run: ``.venv/bin/python benchmarks/residual_streams.py [--images N] [--rtl-only]`` (~40 min on 2 cores at 2,000
inputs; ``--rtl-only``: the RTL table alone, seconds).
Writes ``benchmarks/results/residual_streams.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixq import api, zoo  # noqa: E402
from mixq.algorithms.ptq import quantize_report  # noqa: E402
from mixq.data.fidelity import normalize  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from ptq_common import fidelity, logits, paired_difference  # noqa: E402
from ptq_mobilenetv2 import lowbit_data  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("minmax", "dfq_empirical")
BITS = (None, 8, 12)


def mobilenet_rows(images: int) -> list[dict[str, Any]]:
    model, fs, calib = lowbit_data()
    views = normalize(fs.x[:images])
    ref = logits(model, views)
    rows = []
    for recipe in RECIPES:
        base: torch.Tensor | None = None
        for bits in BITS:
            plan = dataclasses.replace(api.default_plan("mobilenet_v2", model, calib[:8]), residual_bits=bits)
            t = time.perf_counter()
            q = quantize_report(model, plan, calib, recipe, input_shape=(3, 224, 224)).model
            seconds = time.perf_counter() - t
            out = logits(q, views)
            agree, sqnr = fidelity(ref, out)
            hit = out.argmax(1) == ref.argmax(1)
            row: dict[str, Any] = {"recipe": recipe, "residual_bits": bits, "agreement": round(agree, 2),
                                   "sqnr_db": round(sqnr, 2), "ptq_s": round(seconds, 1)}
            if base is not None:
                d, hw = paired_difference(hit, base)
                row["vs_exact"] = [round(d, 2), round(hw, 2)]
            else:
                base = hit
            rows.append(row)
            print(row, flush=True)
    return rows


def resnet_rows() -> list[dict[str, Any]]:
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine
    from mixq.formats import parse_format
    from mixq.rtl.frames import buffer_bits, frame_banks, rings_of
    from mixq.rtl.netgraph import lower_graph

    torch.manual_seed(0)
    m = zoo.load("resnet20", pretrained=False).eval()
    x = torch.rand(8, 3, 32, 32)
    rows = []
    for bits in (None, 8):
        plan = api.default_plan("resnet20", m, x, weight=parse_format("fixed8"), act=parse_format("ufixed8"))
        im = to_integer(api.quantize(m, dataclasses.replace(plan, residual_bits=bits), x), x[:1])
        g = lower_graph(im, IntEngine(im)(x[:1], keep=True).values)
        rings = rings_of(g)
        banks = frame_banks(g, rings)
        mem = buffer_bits(g, rings, banks)
        rows.append({"residual_bits": bits, "widest_buffer_bits": max(b.bits for b in g.buffers),
                     "buffer_memory_mbit": round(sum(mem) / 1e6, 2), "rings": len(rings), "frame_buffers": len(banks),
                     "most_banks": max(banks.values())})
        print(rows[-1], flush=True)
    return rows


def markdown(doc: dict[str, Any]) -> str:
    def bits(b: int | None) -> str:
        return "exact (unset)" if b is None else str(b)

    lines = ["## Residual streams (`benchmarks/residual_streams.py`)", "",
             f"MobileNetV2 (real weights), W8A8 per channel, {doc['images']} fidelity views, 256 calibration crops:",
             "", "| recipe | residual_bits | agreement w/ FP32 (%) | logit SQNR (dB) | "
             "− exact streams (points, 95% CI) | PTQ (s) |", "|---|---|---:|---:|---|---:|"]
    for r in doc["mobilenet_v2"]:
        d = f"{r['vs_exact'][0]:+.2f} ± {r['vs_exact'][1]:.2f}" if "vs_exact" in r else ""
        lines.append(f"| {r['recipe']} | {bits(r['residual_bits'])} | {r['agreement']:.2f} | {r['sqnr_db']:.2f} | "
                     f"{d} | {r['ptq_s']:.0f} |")
    lines += ["", "ResNet-20 (zoo, 32 x 32, W8A8) as the whole-network RTL lowers it:", "",
              "| residual_bits | widest buffer (bits) | buffer memory (Mbit) | rings | frame buffers | most banks |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in doc["resnet20_rtl"]:
        lines.append(f"| {bits(r['residual_bits'])} | {r['widest_buffer_bits']} | {r['buffer_memory_mbit']:.2f} | "
                     f"{r['rings']} | {r['frame_buffers']} | {r['most_banks']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="fidelity views (default: all 2,000)")
    ap.add_argument("--rtl-only", action="store_true", help="re-measure the RTL table only (keeps the JSON's "
                    "MobileNetV2 rows)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = RESULTS / "residual_streams.json"
    if args.rtl_only:
        doc = {**json.loads(path.read_text()), "resnet20_rtl": resnet_rows()}
    else:
        doc = {"images": args.images, "torch": torch.__version__, "resnet20_rtl": resnet_rows(),
               "mobilenet_v2": mobilenet_rows(args.images)}
    atomic_write_json(path, doc)
    atomic_write_text(RESULTS / "residual_streams.md", markdown(doc))


if __name__ == "__main__":
    main()
