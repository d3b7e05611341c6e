"""QAT on a GPU beside the CPU: the CNV / Fashion-MNIST QAT benchmark (``qat_fmnist.py``'s configurations)
trained with ``QatConfig.device = "cuda"`` and on the CPU, same config, side by side.

Run (torch with CUDA; mixq need not be installed)::

    PYTHONPATH=src python3 benchmarks/qat_gpu.py --data-root DIR            # full train / test sets on the GPU
    PYTHONPATH=src python3 benchmarks/qat_gpu.py --data-root DIR --quick    # smoke test, a minute or two

``DIR`` holds the four Fashion-MNIST idx files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``, or uncompressed); without ``--data-root`` the
Debian package folder ``/usr/share/datasets/fashion-mnist`` is read.

For every configuration (``--only``, default ``w4a4_fixed``) three runs, each a fresh run folder under
``--work-dir``, the same `QatConfig` but for ``device``:

* ``cuda (full)``: the GPU on all ``--max-train`` training images (default: all 60k);
* ``cuda (subset)``: the GPU on the first ``--cpu-max-train`` images — the CPU run's data, so the two
  accuracies compare like for like;
* ``cpu (subset)``: the CPU on the first ``--cpu-max-train`` images (default 8192, so the CPU side ends in
  a few minutes on 16 cores).

Each row reports the test accuracy of the exported plain quantized model (evaluated on the CPU, as
everything after training is), the training time of every epoch (steps only: no evaluation, no
checkpoint), images per second and the run's wall time (calibration, training, evaluation, export).
Writes ``benchmarks/results/qat_gpu.json`` and ``.md`` (``--quick``: ``qat_gpu_quick.*``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mixq import zoo
from mixq.algorithms.qat import QatConfig, low_bit_plan, train_qat
from mixq.data import GRAY_MEAN, GRAY_STD, load_fashion_mnist, normalize_gray
from mixq.errors import MixqError
from mixq.formats import parse_format
from mixq.io import atomic_write_json, atomic_write_text
from qat_fmnist import BENCHES, Bench  # beside this file (sys.path[0] when run as a script)

RESULTS = Path(__file__).parent / "results"
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_data(root: Path | None, max_train: int | None, max_test: int | None) -> Data:
    xtr, ytr = load_fashion_mnist("train", root)
    xte, yte = load_fashion_mnist("test", root)
    xtr, ytr, xte, yte = xtr[:max_train], ytr[:max_train], xte[:max_test], yte[:max_test]
    return (normalize_gray(xtr), torch.as_tensor(ytr, dtype=torch.int64),
            normalize_gray(xte), torch.as_tensor(yte, dtype=torch.int64))


def plan_of(b: Bench, model: torch.nn.Module, sample: torch.Tensor) -> Any:
    plan = low_bit_plan("cnv", model, sample, parse_format(b.weight), parse_format(b.act),
                        weight_alt=parse_format(b.weight_alt) if b.weight_alt else None, alt_ratio=b.alt_ratio)
    if b.weight_alt:
        from mixq.algorithms.msq import assign_rows

        plan = assign_rows(model, plan)
    return plan


def warm_up(model: torch.nn.Module, x: torch.Tensor, device: str) -> None:
    """One forward and backward of a copy of the float model on ``device``, so the first timed epoch does not
    pay for starting CUDA (context, cuDNN / cuBLAS handles)."""
    m = copy.deepcopy(model).to(device).train()
    m(x.to(device)).sum().backward()
    if device != "cpu":
        torch.cuda.synchronize()


def run_one(b: Bench, label: str, model: torch.nn.Module, plan: Any, data: Data, cfg: QatConfig,
            work: Path) -> dict[str, Any]:
    """One QAT run in a fresh folder; its row."""
    xtr, ytr, xte, yte = data
    if work.exists():
        shutil.rmtree(work)
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = train_qat(copy.deepcopy(model), plan, (xtr, ytr), cfg, work, val=(xte, yte),
                    fill=-GRAY_MEAN / GRAY_STD)
    wall = time.perf_counter() - t0
    s = res.summary
    cum = [float(h["train_time_s"]) for h in s["history"]]
    per_epoch = [round(t - p, 2) for t, p in zip(cum, [0.0, *cum[:-1]], strict=True)]
    n = int(xtr.shape[0])
    return {
        "name": b.name, "label": b.label, "run": label, "device": cfg.device, "train_images": n,
        "test_images": int(xte.shape[0]), "epochs": cfg.epochs, "steps": s["steps"],
        "val_accuracy": s["val_accuracy"],
        "epoch_val_accuracy": [h.get("val_accuracy") for h in s["history"]],
        "epoch_train_loss": [h["train_loss"] for h in s["history"]],
        "epoch_time_s": per_epoch, "train_time_s": round(sum(per_epoch), 2),
        "images_per_s": round(n * cfg.epochs / max(1e-9, sum(per_epoch)), 1),
        "wall_time_s": round(wall, 1),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# QAT on a GPU vs the CPU (CNV, Fashion-MNIST, {meta['test_images']} test images)",
        "",
        "| configuration | run | device | train images | epochs | top-1 (%) | time per epoch (s) | images/s "
        "| wall (s) |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        ep = ", ".join(f"{t:.1f}" for t in r["epoch_time_s"])
        lines.append(f"| {r['label']} | {r['run']} | {r['device']} | {r['train_images']:,} | {r['epochs']} | "
                     f"{r['val_accuracy']:.2f} | {ep} | {r['images_per_s']:,.0f} | {r['wall_time_s']:.0f} |")
    by = {(r["name"], r["run"]): r for r in rows}
    speed = []
    for name in dict.fromkeys(r["name"] for r in rows):
        g, c = by.get((name, "cuda (subset)")), by.get((name, "cpu (subset)"))
        if g and c:
            speed.append(f"{name}: {g['images_per_s'] / max(1e-9, c['images_per_s']):.1f}x the CPU's training "
                         f"throughput, accuracy {g['val_accuracy'] - c['val_accuracy']:+.2f} points vs the CPU "
                         "on the same data")
    lines += [""] + [f"- {s}" for s in speed] + [
        "",
        f"GPU: {meta['gpu']}. CPU: {meta['cpu']}, {meta['threads']} torch threads. torch {meta['torch']}.",
        "",
        f"Limited: the CPU runs (and the `cuda (subset)` runs beside them) train on the first "
        f"{meta['cpu_max_train']:,} training images only, to keep the CPU side to a few minutes; "
        f"`cuda (full)` trains on {meta['train_images']:,}. Every run evaluates on the same "
        f"{meta['test_images']:,} test images. "
        + ("Quick mode: 1 epoch, at most 4,096 / 1,024 training and 1,000 test images. " if meta["quick"] else "")
        +
        "Time per epoch counts training steps only (no evaluation, no checkpoint); on the GPU the data is drawn "
        "and augmented on the CPU and each batch copied over (pinned, non-blocking). Wall time: calibration, "
        "training, per-epoch evaluation, export and the final evaluation (on the CPU) of the run. GPU runs are "
        "deterministic only as far as CUDA allows (bit-exact results are promised on the CPU only).",
        "",
        f"Config (epochs per row, device per run): {json.dumps(meta['qat_config'])}.",
        "",
        f"Reproduce: `{meta['command']}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST idx folder")
    ap.add_argument("--device", default="cuda", help="the GPU side: cuda or cuda:N (cpu: a smoke test)")
    ap.add_argument("--only", default="w4a4_fixed",
                    help="comma-separated QAT configurations of qat_fmnist.py "
                         f"({', '.join(b.name for b in BENCHES if b.kind == 'qat')})")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the configuration's)")
    ap.add_argument("--max-train", type=int, default=None, help="training images of the full GPU run (default all)")
    ap.add_argument("--cpu-max-train", type=int, default=8192,
                    help="training images of the CPU run and of the GPU run beside it")
    ap.add_argument("--max-test", type=int, default=None, help="test images (default all 10k)")
    ap.add_argument("--no-cpu", action="store_true", help="only the full GPU run")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (both sides)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="1 epoch, 4096 / 1024 training images (GPU full / subset), 1000 test images")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/qat_gpu"))
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 1
        args.max_train = min(args.max_train or 4096, 4096)
        args.cpu_max_train = min(args.cpu_max_train, 1024)
        args.max_test = min(args.max_test or 1000, 1000)
    names = [s for s in args.only.split(",") if s]
    benches = {b.name: b for b in BENCHES if b.kind == "qat"}
    unknown = [s for s in names if s not in benches]
    if unknown:
        ap.error(f"--only: {', '.join(unknown)} not among {', '.join(benches)}")
    if re.fullmatch(r"cpu|cuda(:[0-9]+)?", args.device) is None:
        ap.error(f"--device: must be cuda or cuda:N (cpu: a smoke test of this script), got {args.device!r}")
    torch.set_num_threads(args.threads)
    try:
        base = QatConfig(batch_size=args.batch_size, lr=0.001, scale_lr=0.01, kd_alpha=0.5, kd_temperature=4.0,
                         checkpoint_every=0, threads=args.threads, progress=not args.no_progress, seed=args.seed,
                         device=args.device)
        full = load_data(args.data_root, args.max_train, args.max_test)
    except MixqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    subset = (full[0][: args.cpu_max_train], full[1][: args.cpu_max_train], full[2], full[3])
    model = zoo.load("cnv", pretrained=True)
    meta: dict[str, Any] = {
        "gpu": (f"{torch.cuda.get_device_name(torch.device(args.device))} ({args.device})"
                if args.device != "cpu" else "none (--device cpu: a smoke test of the script)"),
        "cpu": f"{platform.machine()} {os.cpu_count()} cores", "threads": args.threads,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "train_images": int(full[0].shape[0]), "cpu_max_train": int(subset[0].shape[0]),
        "test_images": int(full[2].shape[0]), "quick": args.quick,
        "qat_config": {k: v for k, v in base.to_dict().items() if k not in ("epochs", "device")},
        "command": "PYTHONPATH=src python3 benchmarks/qat_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    warm_up(model, full[0][: args.batch_size], args.device)
    out_json = args.results_dir / ("qat_gpu_quick.json" if args.quick else "qat_gpu.json")
    rows: list[dict[str, Any]] = []
    for name in names:
        b = benches[name]
        cfg = replace(base, epochs=args.epochs or b.epochs, **b.qat)
        plan = plan_of(b, model, full[0][:64])
        runs = [("cuda (full)", full, cfg)]
        if not args.no_cpu:
            runs += [("cuda (subset)", subset, cfg), ("cpu (subset)", subset, replace(cfg, device="cpu"))]
        for label, data, c in runs:
            print(f"== {b.name} {label}: {c.device}, {int(data[0].shape[0])} training images, {c.epochs} epochs",
                  flush=True)
            slug = label.replace(" ", "").replace("(", "-").replace(")", "")
            row = run_one(b, label, model, plan, data, c, args.work_dir / f"{b.name}-{slug}")
            print(f"   top-1 {row['val_accuracy']:.2f}%  epoch times {row['epoch_time_s']} s  "
                  f"{row['images_per_s']:.0f} images/s  wall {row['wall_time_s']} s", flush=True)
            rows.append(row)
            atomic_write_json(out_json, {"meta": meta, "rows": rows})
            atomic_write_text(out_json.with_suffix(".md"), markdown(rows, meta))
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
