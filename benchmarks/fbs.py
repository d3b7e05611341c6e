"""Dynamic channel pruning (FBS) vs static channel pruning at equal executed MACs: CNV on Fashion-MNIST.

    .venv/bin/python benchmarks/fbs.py          # -> benchmarks/results/fbs.json, fbs.md (trained models cached
                                                #    in runs/fbs-bench/; delete it to retrain)

Rows: the dense CNV (shipped weights), FBS at density ``DENSITY`` on every conv (KD from the dense model,
L1 on the saliencies, ``FT_EPOCHS`` epochs of the full training set), and static channel pruning of the
same layers (L1 criterion) removing ``1 - DENSITY`` of their channels, fine-tuned the same way — both
execute about half the dense MACs. Each at FP32 and at W4A4 (QAT, ``QAT_EPOCHS`` epoch on the first
``QAT_IMAGES`` training images, KD from the FP32 model of the row; the FBS gates calibrated after QAT).
Columns: top-1 on the full 10k test set, executed MACs per image (measured per image,
:func:`mixq.algorithms.prune.fbs.executed_macs`), the layer-sequential overlay on XC7Z020 over the
whole test set (:func:`mixq.hw.dynamic.dynamic_overlay`: mean and p95 frame rate). The W4A4 FBS model is
run in the integer engine on ``ENGINE_IMAGES`` test images and compared bit for bit with its
hardware-faithful model (outputs and channel decisions), and its decisions with the fake-quant model's.
One thread; the cached models make a rerun take minutes.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import zoo
from mixq.algorithms.prune import apply_masks, channel_masks, param_masks
from mixq.algorithms.prune.fbs import (
    FbsConfig,
    channel_counts,
    densities,
    executed_macs,
    fit_predictors,
    to_fbs,
    train_fbs,
)
from mixq.algorithms.qat import QatConfig, train_qat
from mixq.api import default_plan
from mixq.engine import faithful, to_integer
from mixq.engine.convert_fbs import FaithfulFBS, engine_channel_counts, keep_channels
from mixq.engine.runner import IntEngine
from mixq.formats import FixedPoint
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.graph.convert import calibrate, to_quantized
from mixq.hw.dynamic import dense_names, dynamic_overlay, streaming_gain
from mixq.hw.estimate import estimate
from mixq.io import atomic_write_json, atomic_write_text
from mixq.nn.fbs import calibrate_gates, fbs_layers
from mixq.plan import QuantPlan
from mixq.tasks.training import PAD_FILL, training_data
from mixq.training import TrainConfig, accuracy, fit

ROOT = Path(__file__).resolve().parent
CACHE = ROOT.parent / "runs" / "fbs-bench"
SHAPE = (1, 28, 28)
LAYERS = ("features.0", "features.3", "features.7", "features.10")
DENSITY = 0.7
# static pruning keeps as many channels as FBS's k = ceil(0.7 C): round(0.29 * 32) = 9, round(0.29 * 64) = 19
STATIC_RATIO = 0.29
FT_EPOCHS = 2
FT_LR = 0.002
QAT_EPOCHS = 1
QAT_IMAGES = 20000
ENGINE_IMAGES = 1000
W4 = FixedPoint(bits=4, signed=True, narrow=True)
A4 = FixedPoint(bits=4, signed=False)
PART = "xc7z020"


def _train_cfg() -> TrainConfig:
    return TrainConfig(epochs=FT_EPOCHS, lr=FT_LR, kd_alpha=0.7, threads=1, progress=False, eval_every_epoch=False)


def _cached(path: Path, model: nn.Module, train: Any) -> tuple[nn.Module, float]:
    """``model`` trained by ``train(model)`` or loaded from ``path``; (model, seconds its training took)."""
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), _seconds(path)
    t = time.perf_counter()
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    secs = time.perf_counter() - t
    atomic_write_text(path.with_suffix(".seconds"), f"{secs:.1f}\n")
    return model.eval(), secs


def _seconds(path: Path) -> float:
    """The training time recorded beside a cached model (nan when it was not recorded)."""
    rec = path.with_suffix(".seconds")
    return float(rec.read_text()) if rec.is_file() else float("nan")


def _qat(name: str, model: nn.Module, teacher: nn.Module, data: dict[str, torch.Tensor],
         masks: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, QuantPlan, float]:
    """W4A4 QAT of ``model`` (KD from ``teacher``), FBS gates calibrated after; cached in ``CACHE``."""
    plan = default_plan(f"cnv-{name}", model, data["xtr"][:64], weight=W4, act=A4)
    calib = [data["xtr"][i:i + 256] for i in range(0, 1024, 256)]
    path = CACHE / f"qat-{name}.pt"
    if path.is_file():
        q = calibrate(to_quantized(fold_bn(model, SHAPE), plan), calib)
        q.load_state_dict(torch.load(path, weights_only=True))
        return q.eval(), plan, _seconds(path)
    cfg = QatConfig(epochs=QAT_EPOCHS, lr=0.001, kd_alpha=0.7, threads=1, progress=False, eval_every_epoch=False)
    t = time.perf_counter()
    start = calibrate_gates(copy.deepcopy(model), calib) if fbs_layers(model) else model  # QAT with 8-bit gates
    res = train_qat(start, plan, (data["xtr"][:QAT_IMAGES], data["ytr"][:QAT_IMAGES]), cfg, CACHE / f"qat-{name}",
                    masks=masks, teacher=teacher, fill=PAD_FILL)
    q = res.model
    if fbs_layers(q):
        calibrate_gates(q, calib)
    torch.save(q.state_dict(), path)
    secs = time.perf_counter() - t
    atomic_write_text(path.with_suffix(".seconds"), f"{secs:.1f}\n")
    return q.eval(), plan, secs


def _known(plan: QuantPlan, specs: list[Any]) -> QuantPlan:
    names = {s.name for s in specs}
    return QuantPlan(plan.model, {k: v for k, v in plan.items() if k in names})


def _row(label: str, bits: str, model: nn.Module, plan: QuantPlan, specs: list[Any], data: dict[str, torch.Tensor],
         train_s: float) -> dict[str, Any]:
    xte, yte = data["xte"], data["yte"]
    macs = executed_macs(model, specs, xte)
    total = macs["total"].double()
    names = [n for n in LAYERS if n in dict(model.named_modules())]
    counts = {n: [(int(a), int(b)) for a, b in c.tolist()] for n, c in channel_counts(model, xte, names).items()}
    hw = dynamic_overlay(specs, dense_names(plan), counts, PART, predictors=bool(fbs_layers(model))).summary()
    hist = torch.histc(total / 1e6, bins=20, min=0, max=20)
    row = {"model": label, "bits": bits, "accuracy": accuracy(model, xte, yte), "test_images": int(xte.shape[0]),
           "macs_mean": float(total.mean()), "macs_p95": float(torch.quantile(total, 0.95)),
           "macs_min": float(total.min()), "macs_max": float(total.max()),
           "macs_per_layer": {k: float(v.double().mean()) for k, v in macs.items() if k != "total"},
           "macs_histogram_M": {"edges": [float(i) for i in range(21)], "counts": [int(c) for c in hist.tolist()]},
           "channels_mean": {n: [float(x) for x in torch.tensor(c).double().mean(0).tolist()]
                             for n, c in counts.items()},
           "overlay": {k: v for k, v in hw.items() if k != "layers"}, "overlay_layers": hw["layers"],
           "train_s": round(train_s, 1)}
    if fbs_layers(model):
        row["densities"] = densities(model)
    if label != "dense":
        sp = estimate(specs, _known(dense_names(plan), specs), PART, "streaming")
        st = {ly.name: ly.cycles for ly in sp.layers if ly.cycles}
        pe = {ly.name: ly.pe for ly in sp.layers if ly.cycles}
        ch = {s.name: s.out_channels for s in specs if s.name in counts}
        row["streaming"] = streaming_gain(st, pe, ch, counts)
    print(f"{label:>7} {bits}: acc {row['accuracy']:.2f}  MACs {row['macs_mean'] / 1e6:.2f}M  overlay "
          f"{hw['fps_mean']:.0f} fps (p95 {hw['fps_p95']:.0f})", flush=True)
    return row


@torch.no_grad()
def _engine_check(qmodel: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The integer engine against the hardware-faithful model (outputs, decisions) and the fake-quant model's
    decisions."""
    t = time.perf_counter()
    im = to_integer(qmodel, x[:1])
    res, counts = engine_channel_counts(IntEngine(im), x)
    fm = faithful(qmodel, im)
    same_out = bool(torch.equal(fm(x), res.real()))
    fq_keep: dict[str, torch.Tensor] = {}
    layers = fbs_layers(qmodel)
    qmodel(x)  # the fake-quant model's decisions: each layer keeps its last saliencies
    for n, m in layers.items():
        assert m.last_saliency is not None
        fq_keep[n] = keep_channels(m.last_saliency, m.k)
    same_faithful = same_fq = total = 0
    for sub in fm.modules():
        if isinstance(sub, FaithfulFBS):
            assert sub.last_keep is not None
            eng = counts[sub.int_name][:, 1]
            same_faithful += int((sub.last_keep.sum(1) == eng).sum())
            same_fq += int((sub.last_keep == fq_keep[sub.int_name]).all(1).sum())
            total += int(x.shape[0])
    return {"images": int(x.shape[0]), "outputs_bit_exact": same_out,
            "engine_macs_total": {k: v for k, v in res.saturated.items() if k.endswith(":macs")},
            "decisions_equal_faithful": f"{same_faithful}/{total}",
            "decisions_equal_fake_quant": f"{same_fq}/{total}", "seconds": round(time.perf_counter() - t, 1)}


def main() -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = training_data("fmnist")
    data = {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}
    dense = zoo.load("cnv", pretrained=True).eval()
    specs = capture(dense, SHAPE)
    cfg = FbsConfig(density=DENSITY, layers=LAYERS, train=_train_cfg())

    def train_fbs_model(m: nn.Module) -> None:
        fit_predictors(m, xtr[:2048], spread=0.05)
        train_fbs(m, dense, (xtr, ytr), cfg, fill=PAD_FILL)

    fbs, fbs_s = _cached(CACHE / "fbs.pt", to_fbs(dense, cfg, SHAPE), train_fbs_model)
    masks = channel_masks(dense, STATIC_RATIO, list(LAYERS))

    def train_static(m: nn.Module) -> None:
        fit(m.train(), xtr, ytr, _train_cfg(), teacher=dense, masks=param_masks(m, masks), fill=PAD_FILL,
            desc="static finetune")

    static, static_s = _cached(CACHE / "static.pt", apply_masks(dense, masks), train_static)
    w8 = default_plan("cnv", dense, xtr[:64])
    w8_fbs = default_plan("cnv-fbs", fbs, xtr[:64])
    rows = [_row("dense", "fp32", dense, w8, specs, data, 0.0), _row("fbs", "fp32", fbs, w8_fbs, specs, data, fbs_s),
            _row("static", "fp32", static, w8, specs, data, static_s)]
    engine: dict[str, Any] = {}
    for label, model, teacher, m in (("dense", dense, dense, None), ("fbs", fbs, fbs, None),
                                     ("static", static, static, masks)):
        q, plan, secs = _qat(label, model, teacher, data, m)
        rows.append(_row(label, "w4a4", q, plan, specs, data, secs))
        if label == "fbs":
            engine = _engine_check(q, xte[:ENGINE_IMAGES])
            print("engine:", engine, flush=True)
    doc = {"benchmark": "fbs", "model": "cnv", "dataset": "fashion-mnist", "part": PART, "density": DENSITY,
           "layers": list(LAYERS), "finetune_epochs": FT_EPOCHS, "finetune_lr": FT_LR, "qat_epochs": QAT_EPOCHS,
           "qat_images": QAT_IMAGES, "dense_macs": sum(s.macs for s in specs if s.is_compute), "rows": rows,
           "engine": engine, "threads": 1}
    atomic_write_json(ROOT / "results" / "fbs.json", doc)
    atomic_write_text(ROOT / "results" / "fbs.md", _markdown(doc))
    return 0


def _markdown(doc: dict[str, Any]) -> str:
    lines = ["# FBS (dynamic channel pruning) vs static channel pruning — CNV, Fashion-MNIST", "",
             f"Density {doc['density']} on {', '.join(doc['layers'])}; fine-tune {doc['finetune_epochs']} epochs "
             f"(60k images, KD from dense); W4A4 by QAT, {doc['qat_epochs']} epoch on {doc['qat_images']} images. "
             f"Full 10k test set. Overlay on {doc['part']}, frame rate over the test set.", "",
             "Cycle reduction: the dense row of the same bits over this row (mean cycles per frame); in brackets "
             "against the dense network on this row's own cores (which also hold the FBS predictors). "
             "Streaming gain: frame interval of the dense streaming design over the gated one (output-channel "
             "skipping only, see `mixq.hw.dynamic`).", "",
             "| model | bits | top-1 % | executed MACs/image (mean / p95, M) | MAC reduction | overlay fps mean | "
             "overlay fps p95 | cycle reduction | streaming gain | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense_cycles = {r["bits"]: r["overlay"]["cycles_mean"] for r in doc["rows"] if r["model"] == "dense"}
    for r in doc["rows"]:
        ov = r["overlay"]
        stream = f"{r['streaming']['gain_mean']:.2f}x" if "streaming" in r else "—"
        lines.append(f"| {r['model']} | {r['bits']} | {r['accuracy']:.2f} | {r['macs_mean'] / 1e6:.2f} / "
                     f"{r['macs_p95'] / 1e6:.2f} | {doc['dense_macs'] / r['macs_mean']:.2f}x | {ov['fps_mean']:.0f} | "
                     f"{ov['fps_p95']:.0f} | {dense_cycles[r['bits']] / ov['cycles_mean']:.2f}x "
                     f"({ov['cycle_reduction']:.2f}x) | {stream} | {r['train_s']:.0f} |")
    e = doc["engine"]
    lines += ["", f"Integer engine (W4A4 FBS, {e.get('images')} test images): outputs bit-exact with the "
              f"hardware-faithful model: {e.get('outputs_bit_exact')}; channel decisions equal: "
              f"{e.get('decisions_equal_faithful')} (faithful), {e.get('decisions_equal_fake_quant')} "
              "(plain fake quant, whose rounding differs by design).", ""]
    for r in doc["rows"]:
        if "densities" in r:
            lines.append(f"Per-layer density ({r['model']} {r['bits']}): " + ", ".join(
                f"{n} {v['k']}/{v['channels']}" for n, v in r["densities"].items()) + "; mean channels (in, out): "
                + ", ".join(f"{n} ({c[0]:.1f}, {c[1]:.1f})" for n, c in r["channels_mean"].items()))
            h = r["macs_histogram_M"]
            lines.append("Executed-MAC histogram (M MACs: images): " + ", ".join(
                f"{int(e0)}-{int(e0) + 1}: {c}" for e0, c in zip(h["edges"], h["counts"], strict=False) if c))
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
