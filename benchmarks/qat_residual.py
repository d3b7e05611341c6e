"""What quantized residual streams cost after QAT, and what they save in hardware (session 22).

ResNet-20 (the zoo's, one input channel) trained here on Fashion-MNIST (`fbs.py`'s dense model and cache:
8 epochs of the first 55,000 training images), then W4A4 (every layer, as `fbs.py`'s W4A4 rows) by QAT with the residual
streams exact (the default), at 8 bits and at 4 bits (the activations' width: each stream's step shared with the
layers reading it, `mixq.algorithms.qat.prepare.train_streams`). QAT as `fbs.py`'s W4A4 rows: 1 epoch of 20,000
images, KD from the FP32 model (0.7), lr 1e-3. Beside each, min-max PTQ of the same plan (256 calibration images).
Top-1 on the full 10,000-image test set, each row against the exact-stream row of its method with the paired 95% CI;
the integer engine checked bit-exact on 500 test images for every QAT row; the streaming estimate on the XC7Z020
(folding optimized; an exact stream priced at the engine's width of the sum, `hw.bits.exact_sum_bits`).

Run: ``.venv/bin/python benchmarks/qat_residual.py`` (~45 min on 2 cores without the dense model cached, most of it
training that model on one thread). Writes ``benchmarks/results/qat_residual.{json,md}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fbs import A4, CACHE, NETS, QAT_EPOCHS, QAT_IMAGES, SHAPE, W4, _data, _dense  # noqa: E402
from mixq import api  # noqa: E402
from mixq.algorithms.qat import QatConfig, train_qat  # noqa: E402
from mixq.engine import verify  # noqa: E402
from mixq.graph.capture import capture  # noqa: E402
from mixq.hw import estimate  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from mixq.plan import QuantPlan  # noqa: E402
from mixq.tasks.training import PAD_FILL  # noqa: E402
from ptq_common import paired_difference  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (None, 8, 4)
PART = "xc7z020"


def _hits(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], 500):
            out.append(model(x[i:i + 500]).argmax(1) == y[i:i + 500])
    return torch.cat(out)


def _plan(model: torch.nn.Module, sample: torch.Tensor) -> QuantPlan:
    return api.default_plan("resnet20-fmnist", model, sample, weight=W4, act=A4)  # as fbs.py's W4A4 rows


def _hardware(plan: QuantPlan, specs: list[Any]) -> dict[str, Any]:
    e = estimate(specs, plan, PART, "streaming", fold="optimize")
    return {"fits": e.fits, "fps": round(e.fps, 1), "lut": round(e.resources.lut), "bram": e.resources.bram}


def main() -> None:
    torch.manual_seed(0)
    data = _data()
    dense, _ = _dense(NETS["resnet20"], data)
    dense = dense.eval()
    xte, yte = data["xte"], data["yte"]
    ref = _hits(dense, xte, yte)
    specs = capture(dense, SHAPE)
    base = _plan(dense, data["xtr"][:64])
    calib = data["xtr"][:256]
    fp32 = round(100 * float(ref.double().mean()), 2)
    rows: list[dict[str, Any]] = [{"method": "fp32", "residual_bits": None, "top1": fp32}]
    for method in ("ptq", "qat"):
        exact_hits: torch.Tensor | None = None
        for bits in WIDTHS:
            plan = dataclasses.replace(base, residual_bits=bits)
            t = time.perf_counter()
            if method == "ptq":
                q = api.quantize(dense, plan, calib)
            else:
                cfg = QatConfig(epochs=QAT_EPOCHS, lr=0.001, kd_alpha=0.7, threads=1, progress=False,
                                eval_every_epoch=False)
                folder = CACHE / f"qat-residual-{bits or 'exact'}"
                if (folder / "checkpoint.pt").exists():
                    (folder / "checkpoint.pt").unlink()  # a fresh run each time (minutes)
                q = train_qat(dense, plan, (data["xtr"][:QAT_IMAGES], data["ytr"][:QAT_IMAGES]), cfg, folder,
                              teacher=dense, fill=PAD_FILL).model
            seconds = time.perf_counter() - t
            hits = _hits(q.eval(), xte, yte)
            row: dict[str, Any] = {"method": method, "residual_bits": bits,
                                   "top1": round(100 * float(hits.double().mean()), 2), "seconds": round(seconds, 1),
                                   **_hardware(plan, specs)}
            if exact_hits is None:
                exact_hits = hits
            else:
                d, hw = paired_difference(hits, exact_hits)
                row["vs_exact"] = [round(d, 2), round(hw, 2)]
            if method == "qat":
                rep = verify(q, xte[:500])
                row["engine_bit_exact"] = bool(rep["exact"])
            rows.append(row)
            print(row, flush=True)
    doc = {"model": "zoo resnet20, 1 input channel, trained on Fashion-MNIST (fbs.py's dense model)",
           "plan": "W4A4 per channel, every layer (as fbs.py's W4A4 rows)", "part": PART,
           "test_images": int(xte.shape[0]),
           "qat": {"epochs": QAT_EPOCHS, "images": QAT_IMAGES, "kd_alpha": 0.7, "lr": 0.001}, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "qat_residual.json", doc)
    atomic_write_text(RESULTS / "qat_residual.md", markdown(doc))


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Quantized residual streams after QAT (ResNet-20, Fashion-MNIST)", "",
             f"{doc['model']}; {doc['plan']}; top-1 on the {doc['test_images']:,} test images; streaming estimate "
             f"on the {doc['part'].upper()} (folding optimized).", "",
             "| method | residual streams | top-1 % | vs exact streams (points, 95% CI) | engine bit-exact | FPS | "
             "LUT | BRAM (36 kb) | seconds |", "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        bits = "exact" if r["residual_bits"] is None else f"{r['residual_bits']} bits"
        vs = f"{r['vs_exact'][0]:+.2f} ± {r['vs_exact'][1]:.2f}" if "vs_exact" in r else ""
        if r["method"] == "fp32":
            lines.append(f"| FP32 | — | {r['top1']:.2f} | | | | | | |")
            continue
        ok = {True: "yes", False: "NO"}.get(r.get("engine_bit_exact"), "")
        lines.append(f"| {r['method'].upper()} | {bits} | {r['top1']:.2f} | {vs} | {ok} | {r['fps']:,.0f} "
                     f"{'' if r['fits'] else '(does not fit)'} | {r['lut']:,} | {r['bram']:g} | {r['seconds']:g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--table":
        doc = json.loads((RESULTS / "qat_residual.json").read_text())
        atomic_write_text(RESULTS / "qat_residual.md", markdown(doc))
    else:
        main()
