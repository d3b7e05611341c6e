"""QAT benchmark: the CNV model on the full Fashion-MNIST, from FP32 down to binary and pruned + focused.

Run: ``.venv/bin/python benchmarks/qat_fmnist.py`` (CPU; an hour or more on two cores). Every
configuration trains in its own folder under ``--work-dir`` (default ``runs/qat_fmnist``) with
checkpoints, so an interrupted benchmark re-run with the same arguments continues where it
stopped and finished configurations are only re-evaluated. Writes
``benchmarks/results/qat_fmnist.json`` and ``benchmarks/results/qat_fmnist.md``.

Configurations (the first and the last layer stay at 8 bits in every quantized one — the usual
policy for low-bit networks, :func:`mixq.algorithms.qat.low_bit_plan`):

* ``fp32``: the zoo's pretrained CNV (its training time from ``cnv_fmnist.json``);
* ``w8a8_ptq``: 8-bit fixed point, post-training (min-max calibration on 512 training images);
* ``w4a4_fixed``: 4-bit fixed-point weights (per-row LSQ steps) and activations, QAT;
* ``w4a4_msq``: half of every layer's rows in 4-bit SP2 (rows chosen by ``mixq.algorithms.msq``),
  the rest 4-bit fixed point, 4-bit activations, QAT;
* ``w2a2``: 2-bit fixed point weights and activations, QAT;
* ``w1a1_binary``: XNOR binary weights (α·sign, α = mean|w| per row), 1-bit activations, QAT;
* ``w3a8_sp2``: 3-bit SP2 weights, 8-bit activations, QAT;
* ``pruned70_focused4``: 70% of the weights of the inner layers pruned by magnitude, fine-tuned,
  then focused 4-bit formats (shift formats where the weights are not bimodal) and QAT.

QAT everywhere: SGD (Nesterov, lr 1e-3, quantizer steps 1e-2; Adam, lr 1e-3 for the binary network) with a
cosine schedule (lr 1e-2 on the BN-folded model collapsed W4A4 to 79% after 1/6 epoch; 1e-3 kept 94.2%),
LSQ steps, distillation from the FP32 model (α = 0.5, T = 4),
the FP32 recipe's augmentation (2-pixel shifts, flips), BN folded before training. Accuracy is
measured on the full 10k test set with the exported plain quantized model (what the integer
engine reads). Size: weights at their storage bits, a 32-bit scale per row, 32-bit biases; the
pruned model stores a 1-bit occupancy bitmap plus the non-zero weights where that is smaller.
Training time is the time spent in training steps (evaluation and checkpoints excluded), on the
machine named in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mixq import zoo
from mixq.algorithms.prune import PruneConfig, prune_and_quantize
from mixq.algorithms.qat import QatConfig, low_bit_plan, train_qat
from mixq.api import quantize
from mixq.data import GRAY_MEAN, GRAY_STD, load_fashion_mnist, normalize_gray
from mixq.formats import parse_format
from mixq.io import atomic_write_json, atomic_write_text
from mixq.nn.size import sparse_size_bytes
from mixq.training import accuracy
from mixq.zoo.cnv import WEIGHTS_PATH, load_pretrained

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Bench:
    name: str
    label: str
    kind: str  # fp32 | ptq | qat | prune
    weight: str = ""
    act: str = ""
    weight_alt: str | None = None
    alt_ratio: float = 0.0
    epochs: int = 2
    qat: dict[str, Any] = field(default_factory=dict)


BENCHES = [
    Bench("fp32", "FP32", "fp32"),
    Bench("w8a8_ptq", "W8A8 PTQ (fixed)", "ptq", "fixed8n", "ufixed8"),
    Bench("w4a4_fixed", "W4A4 QAT (fixed)", "qat", "fixed4n", "ufixed4", epochs=2),
    Bench("w4a4_msq", "W4A4 QAT (MSQ: 50% SP2 rows)", "qat", "fixed4n", "ufixed4", "sp2_4", 0.5, epochs=2),
    Bench("w2a2", "W2A2 QAT (fixed)", "qat", "fixed2", "ufixed2", epochs=3),
    Bench("w1a1_binary", "W1A1 QAT (binary weights, 1-bit acts)", "qat", "binary", "ufixed1", epochs=6,
          qat={"optimizer": "adam", "lr": 1e-3}),
    Bench("w3a8_sp2", "W3A8 QAT (SP2 weights)", "qat", "sp2_3", "ufixed8", epochs=2),
    Bench("pruned70_focused4", "70% pruned + focused 4-bit (A8)", "prune", "fixed8n", "ufixed8", epochs=2),
]


def _data(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    if quick:
        xtr, ytr, xte, yte = xtr[:1024], ytr[:1024], xte[:1000], yte[:1000]
    return (normalize_gray(xtr), torch.as_tensor(ytr, dtype=torch.int64),
            normalize_gray(xte), torch.as_tensor(yte, dtype=torch.int64))


def _fp32_train_time() -> float | None:
    meta = WEIGHTS_PATH.with_suffix(".json")
    if not meta.is_file():
        return None
    t = json.loads(meta.read_text()).get("train_wall_time_s")
    return float(t) if t is not None else None


def run_bench(b: Bench, model: torch.nn.Module, data: tuple[torch.Tensor, ...], base_cfg: QatConfig,
              work: Path, quick: bool) -> dict[str, Any]:
    xtr, ytr, xte, yte = data
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    row: dict[str, Any] = {"name": b.name, "label": b.label}
    t0 = time.perf_counter()
    if b.kind == "fp32":
        row.update(accuracy=accuracy(model, xte, yte), size_bytes=fp32_bytes, train_time_s=_fp32_train_time(),
                   epochs=json.loads(WEIGHTS_PATH.with_suffix(".json").read_text()).get("epochs")
                   if WEIGHTS_PATH.with_suffix(".json").is_file() else None)
    else:
        plan = low_bit_plan("cnv", model, xtr[:64], parse_format(b.weight), parse_format(b.act),
                            weight_alt=parse_format(b.weight_alt) if b.weight_alt else None,
                            alt_ratio=b.alt_ratio)
        if b.weight_alt:
            from mixq.algorithms.msq import assign_rows

            plan = assign_rows(model, plan)
        epochs = 1 if quick else b.epochs
        cfg = replace(base_cfg, epochs=epochs, **b.qat)
        if b.kind == "ptq":
            q = quantize(model, plan, xtr[: base_cfg.calib_images])
            row.update(accuracy=accuracy(q, xte, yte), size_bytes=sparse_size_bytes(q)["bytes"],
                       train_time_s=round(time.perf_counter() - t0, 1), epochs=0)
        elif b.kind == "qat":
            res = train_qat(model, plan, (xtr, ytr), cfg, work / b.name, val=(xte, yte), resume=True,
                            fill=-GRAY_MEAN / GRAY_STD)
            s = res.summary
            row.update(accuracy=s["val_accuracy"], size_bytes=s["size_bytes"], train_time_s=s["train_time_s"],
                       epochs=epochs, steps=s["steps"], history=s["history"])
        else:
            pcfg = PruneConfig(sparsity=0.7, finetune_epochs=1, finetune_lr=0.001, focused_bits=4)
            res_p = prune_and_quantize(model, plan, (xtr, ytr), pcfg, cfg, work / b.name, val=(xte, yte),
                                       resume=True, fill=-GRAY_MEAN / GRAY_STD)
            s = res_p.summary
            row.update(accuracy=s["val_accuracy"], size_bytes=s["size_bytes"], train_time_s=s["train_time_s"],
                       epochs=epochs + pcfg.finetune_epochs, sparsity=s["sparsity"],
                       dense_size_bytes=s["dense_size_bytes"], layers=s["layers"],
                       pruned_float_accuracy=s.get("pruned_float_accuracy"),
                       history=s.get("finetune", {}).get("history", []) + res_p.qat.summary["history"])
    row["compression"] = fp32_bytes / row["size_bytes"]
    row["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    fp = next((r["accuracy"] for r in rows if r["name"] == "fp32"), None)
    lines = [
        f"# QAT on Fashion-MNIST (CNV, full {meta['test_images']}-image test set)",
        "",
        "| configuration | top-1 (%) | Δ vs FP32 | size (bytes) | compression | epochs | training time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = "" if fp is None or r["name"] == "fp32" else f"{r['accuracy'] - fp:+.2f}"
        t = "" if r.get("train_time_s") is None else f"{r['train_time_s']:.0f}"
        lines.append(f"| {r['label']} | {r['accuracy']:.2f} | {delta} | {r['size_bytes']:,} | "
                     f"{r['compression']:.1f}x | {r.get('epochs', '')} | {t} |")
    lines += [
        "",
        f"Machine: {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads. First and last layer at "
        "8 bits in every quantized configuration. Sizes count weights at their storage bits, a 32-bit scale per "
        "row, 32-bit biases; the pruned model stores a 1-bit occupancy bitmap plus the non-zero weights. "
        "Training time: QAT steps only (for FP32: the zoo training run; for PTQ: calibration). "
        "Reproduce: `.venv/bin/python benchmarks/qat_fmnist.py`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work-dir", type=Path, default=Path("runs/qat_fmnist"))
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--only", default="", help="comma-separated configuration names")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores slow it down)")
    ap.add_argument("--quick", action="store_true", help="1024 training / 1000 test images, 1 epoch (smoke test)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--weights", type=Path, default=None, help="CNV state dict (default: the zoo's weights)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = zoo.load("cnv", pretrained=True) if args.weights is None else load_pretrained(zoo.load("cnv"), args.weights)
    data = _data(args.quick)
    base_cfg = QatConfig(batch_size=128, lr=0.001, scale_lr=0.01, kd_alpha=0.5, kd_temperature=4.0,
                         checkpoint_every=100, threads=args.threads, progress=not args.no_progress, seed=0)
    work = args.work_dir / ("quick" if args.quick else "full")
    only = {s for s in args.only.split(",") if s}
    out_json = args.results_dir / ("qat_fmnist_quick.json" if args.quick else "qat_fmnist.json")
    rows: list[dict[str, Any]] = []
    if out_json.is_file():  # keep rows of configurations not run this time
        rows = [r for r in json.loads(out_json.read_text()).get("rows", []) if only and r["name"] not in only]
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores (CPU only)",
        "torch": torch.__version__, "python": sys.version.split()[0], "threads": args.threads,
        "train_images": int(data[0].shape[0]), "test_images": int(data[2].shape[0]), "quick": args.quick,
        "qat_config": base_cfg.to_dict(),
    }
    for b in BENCHES:
        if only and b.name not in only:
            continue
        print(f"== {b.name}: {b.label}", flush=True)
        row = run_bench(b, model, data, base_cfg, work, args.quick)
        print(f"   accuracy {row['accuracy']:.2f}%  size {row['size_bytes']:,} B  "
              f"compression {row['compression']:.1f}x  train {row.get('train_time_s')} s", flush=True)
        rows = [r for r in rows if r["name"] != b.name] + [row]
        order = [x.name for x in BENCHES]
        rows.sort(key=lambda r: order.index(r["name"]))
        atomic_write_json(out_json, {"meta": meta, "rows": rows})
        atomic_write_text(out_json.with_suffix(".md"), markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
