"""FBS (dynamic channel pruning) vs static channel pruning on MobileNetV2 with its real ImageNet weights:
top-1 agreement with the FP32 model on the 2,000-view fidelity set of the shipped photos, at equal executed MACs.

    .venv/bin/python benchmarks/fbs_mobilenetv2.py             # train (or load) both arms, measure, print the table
    .venv/bin/python benchmarks/fbs_mobilenetv2.py --part fbs  # train (or load) one arm only (fbs / static)
    .venv/bin/python benchmarks/fbs_mobilenetv2.py --quick     # smoke run: a few steps, 64 views (not cached)

Trained models are cached in ``runs/fbs-bench/mobilenetv2-{fbs,static}.pt`` (with ``.seconds``), each measured
row in ``runs/fbs-bench/rows/mobilenetv2-*.json``; the rows together in ``runs/fbs-bench/rows-mobilenetv2.json``.

Data (nothing downloaded; no labels used): fine-tuning on ``TRAIN_CROPS`` random crops / flips of the 8
scikit-image / scikit-learn photos (:func:`mixq.data.calibration_set` without the foolbox photos) at
``TRAIN_SIZE`` px (CPU budget), KD from the dense FP32 model only (``kd_alpha`` 1: the labels are unused);
evaluation on :func:`mixq.data.fidelity.fidelity_set` (2,000 views of the 20 foolbox ImageNet photos at 224 px,
disjoint by photo from the training crops): top-1 agreement with the dense FP32 model, and FBS − static with
its paired 95% CI (normal approximation, and clustered by photo).

Gated layers: the 1x1 expansion conv of each inverted residual block with one (``features.2`` .. ``features.17``,
16 layers), density ``DENSITY`` (``--density``; k = ceil(d C) hidden channels per image). A suppressed hidden
channel is 0 after its gate and ReLU6, so its depthwise channel is not computed (the depthwise conv would output
its constant bias), and the projection conv folds that constant into a per-image bias:
:func:`mixq.algorithms.prune.fbs.executed_macs` counts the depthwise and projection convs so (``input_activity`` /
``conv_execution``), the same rule for the static arm, whose pruned channels are 0 after their zeroed BatchNorm.

Arms, fine-tuned alike (same crops, steps, lr, KD; every BatchNorm frozen in eval mode — running statistics from
ImageNet kept, affine parameters trained — as the 8 training photos are too few to re-estimate them):

* FBS (:mod:`mixq.algorithms.prune.fbs`): ``to_fbs`` (the gated convs' BatchNorm kept, the others folded),
  ``fit_predictors`` (ridge), ``static_prior`` (margin 0.5: the winner-take-all starts at the static L1 choice),
  ``train_fbs`` (KD + L1 on the saliencies), ``fold_fbs_bn``;
* static: ``channel_masks`` (L1) on the same layers keeping the same k channels, ``apply_masks``, fine-tuned with
  the masks (``param_masks``).

Columns: agreement, executed MACs per image (mean / p95, measured per image), the layer-sequential overlay on
XC7Z020 (:func:`mixq.hw.dynamic.dynamic_overlay`: cores sized for the dense network, W8A8 plan, the FBS
predictors priced; the expansion, depthwise and projection convs priced with their per-image channel counts), the
single engine on the same part (:func:`mixq.hw.dynamic.dynamic_mnisc`: a 16 x 16 int8 EU running the dense
network's W8A8 program, the same steps at the same counts, each gated step with its predictor), train seconds (one
thread on a shared machine). The default run writes ``benchmarks/results/fbs_mobilenetv2.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fbs import dense_program  # noqa: E402
from mixq import zoo  # noqa: E402
from mixq.algorithms.prune import apply_masks, channel_masks, param_masks  # noqa: E402
from mixq.algorithms.prune.fbs import (  # noqa: E402
    FbsConfig,
    channel_counts,
    densities,
    executed_macs,
    fit_predictors,
    fold_fbs_bn,
    static_prior,
    to_fbs,
    train_fbs,
)
from mixq.api import default_plan  # noqa: E402
from mixq.data import calibration_set  # noqa: E402
from mixq.data.fidelity import FidelitySet, clustered_paired_difference, fidelity_set, normalize  # noqa: E402
from mixq.engine.program import Program  # noqa: E402
from mixq.graph.capture import capture  # noqa: E402
from mixq.hw.dynamic import dense_names, dynamic_mnisc, dynamic_overlay  # noqa: E402
from mixq.hw.mnisc import EuConfig, EuStep  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from mixq.nn.fbs import fbs_layers, keep_count  # noqa: E402
from mixq.rtl.mnisc import step_counts  # noqa: E402
from mixq.training import TrainConfig, fit  # noqa: E402
from ptq_common import paired_difference  # noqa: E402

CACHE = Path(__file__).resolve().parent.parent / "runs" / "fbs-bench"
RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (3, 224, 224)
BLOCKS = range(2, 18)  # the inverted residual blocks with an expansion conv
GATED = tuple(f"features.{i}.conv.0.0" for i in BLOCKS)
DOWNSTREAM = tuple(n for i in BLOCKS for n in (f"features.{i}.conv.1.0", f"features.{i}.conv.2"))
DENSITY = 0.9  # the default; --density for others (cached and written under their own names)
TRAIN_SIZE = 160
TRAIN_CROPS = 3200
EPOCHS = 3  # 300 steps of 32 crops
BATCH = 32
OPTIMIZER = "adam"
LR = 1e-4
SPREAD = 0.05
PRIOR_MARGIN = 0.5
FIT_IMAGES = 256
EVAL_BATCH = 50
PART = "xc7z020"
#: how the recipe was chosen: ad-hoc runs (2026-12-05) on every 40th / 20th view of the fidelity set (50 / 100 views;
#: there is no separate validation set of ImageNet photos), not rerun by this script
NOTES = [
    "MobileNetV2 is fragile to removing expansion channels without fine-tuning: L1 static pruning of the 16 "
    "expansion convs keeps 42% agreement at 5% of the channels removed, 6% at 10%, 0% at 20% and more (50 views); "
    "FBS with fitted predictors (no static prior) keeps 58% / 22% / 0% / 0% at densities 0.95 / 0.9 / 0.8 / 0.75, "
    "with the static prior (margin 0.5) 34% / 4% / 0% / 0%.",
    "Fine-tune optimizer (static arm, density 0.9, 60 steps of 32 crops at 160 px, KD only, BatchNorm frozen; "
    "100 views): SGD lr 0.002 0% (from 4%), Adam lr 1e-4 40%. At density 0.5 neither SGD (lr 0.002 / 0.01: "
    "diverged) nor Adam (lr 1e-4 / 5e-4) left 0% in 30-60 steps.",
]
BENCH_CACHE = Path(os.environ.get("MIXQ_BENCH_CACHE", "/tmp/mixq_bench_cache"))  # ptq_mobilenetv2.py's


@contextlib.contextmanager
def frozen_bn(model: nn.Module) -> Iterator[nn.Module]:
    """Every BatchNorm of ``model`` kept in eval mode (running statistics used and not updated; its affine
    parameters still train) while the block runs, whatever ``model.train()`` asks."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in bns:
        m.eval()
        m.train = types.MethodType(lambda self, mode=True: self, m)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for m in bns:
            del m.train


def _train_cfg(steps_epochs: int) -> TrainConfig:
    return TrainConfig(epochs=steps_epochs, batch_size=BATCH, lr=LR, optimizer=OPTIMIZER, kd_alpha=1.0, threads=1,
                       progress=False, eval_every_epoch=False)


def _cached(path: Path | None, model: nn.Module, train: Callable[[nn.Module], dict[str, Any]]
            ) -> tuple[nn.Module, float, dict[str, Any]]:
    """``model`` trained by ``train(model)`` or loaded from ``path`` (None: not cached); (model, seconds, info)."""
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        info_path = path.with_suffix(".info.json")
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return model.eval(), float(path.with_suffix(".seconds").read_text()), info
    t = time.perf_counter()
    info = train(model)
    secs = time.perf_counter() - t
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        atomic_write_text(path.with_suffix(".seconds"), f"{secs:.1f}\n")
        atomic_write_json(path.with_suffix(".info.json"), info)
    return model.eval(), secs, info


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalize(x[i:i + EVAL_BATCH])) for i in range(0, x.shape[0], EVAL_BATCH)])


def _row(label: str, model: nn.Module, specs: list[Any], views: torch.Tensor, ref: torch.Tensor | None,
         train_s: float, program: Callable[[], tuple[Program, tuple[EuStep, ...]]]
         ) -> tuple[dict[str, Any], torch.Tensor]:
    """One row: executed MACs and the model's logits in one pass, channel counts in a second, the overlay and the
    single engine (``program``: the dense network's, :func:`fbs.dense_program`)."""
    out: list[torch.Tensor] = []
    keep = model.register_forward_hook(lambda _m, _a, y: out.append(y.detach()))
    try:
        macs = executed_macs(model, specs, normalize(views), batch_size=EVAL_BATCH)
    finally:
        keep.remove()
    logits = torch.cat(out)
    ref = logits if ref is None else ref
    hits = logits.argmax(1) == ref.argmax(1)
    counts_t = channel_counts(model, normalize(views), [*GATED, *DOWNSTREAM], batch_size=EVAL_BATCH)
    counts = {n: [(int(a), int(b)) for a, b in c.tolist()] for n, c in counts_t.items()}
    is_fbs = bool(fbs_layers(model))
    plan = default_plan(f"mobilenetv2-{label}", model, normalize(views[:2]))
    hw = dynamic_overlay(specs, dense_names(plan), counts, PART, predictors=is_fbs, with_predictor=GATED).summary()
    # the single engine: each gated step computes its kept channels; the depthwise and projection steps are priced
    # with the counts the overlay takes (measured: only the active depthwise groups, the projection reading the
    # kept channels, the suppressed ones' constant folded into its bias), the rest dense
    prog, steps = program()
    eu_counts = step_counts(prog, {n: [b for _, b in counts[n]] for n in GATED})
    eu_counts.update({n: counts[n] for n in DOWNSTREAM})
    eu = dynamic_mnisc(steps, eu_counts, EuConfig(wbits=8, abits=8), PART, predictors=is_fbs,
                       with_predictor=GATED, predictor_bits=8).summary()
    total = macs["total"].double()
    row: dict[str, Any] = {
        "model": label, "bits": "fp32", "agreement": 100.0 * float(hits.double().mean()), "views": int(hits.numel()),
        "macs_mean": float(total.mean()), "macs_p95": float(torch.quantile(total, 0.95)),
        "macs_min": float(total.min()), "macs_max": float(total.max()),
        "macs_per_layer": {k: float(v.double().mean()) for k, v in macs.items() if k != "total"},
        "channels_mean": {n: [float(v) for v in c.double().mean(0).tolist()] for n, c in counts_t.items()},
        "overlay": {k: v for k, v in hw.items() if k != "layers"},
        "single_engine": {k: v for k, v in eu.items() if k != "layers"}, "train_s": round(train_s, 1),
        "hits": "".join("1" if h else "0" for h in hits.tolist()),
    }
    if is_fbs:
        row["densities"] = densities(model)
    print(f"{label:>7}: agreement {row['agreement']:.2f}%  MACs {row['macs_mean'] / 1e6:.1f}M "
          f"(p95 {row['macs_p95'] / 1e6:.1f}M)  overlay {hw['fps_mean']:.1f} fps (p95 {hw['fps_p95']:.1f})  "
          f"single engine {eu['fps_mean']:.1f} fps (p95 {eu['fps_p95']:.1f})",
          flush=True)
    return row, logits


def _fidelity(n: int) -> FidelitySet:
    """``fidelity_set(n)``, the 2,000-view set read from ptq_mobilenetv2.py's cache where it is (the same set)."""
    path = BENCH_CACHE / "fidelity_2000.pt"
    if n == 2000 and path.is_file():
        fs = torch.load(path, weights_only=False)
        if isinstance(fs, FidelitySet) and len(fs) == n:
            return fs
    return fidelity_set(n)


def static_masks(dense: nn.Module, density: float) -> dict[str, torch.Tensor]:
    """L1 channel masks of the gated layers keeping exactly FBS's ``k = keep_count(density, C)`` channels each."""
    out: dict[str, torch.Tensor] = {}
    mods = dict(dense.named_modules())
    for name in GATED:
        c = int(mods[name].out_channels)  # type: ignore[arg-type]
        out.update(channel_masks(dense, (c - keep_count(density, c)) / c, [name]))
    return out


def _hits(row: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([c == "1" for c in row["hits"]])


def markdown(doc: dict[str, Any]) -> str:
    rows = {r["model"]: r for r in doc["rows"]}
    dense_m = rows["dense"]["macs_mean"]  # the dense model's executed MACs (dead ReLU6 channels skipped too)
    lines = ["| model | density | agreement w/ FP32 (%) | − static (points, 95% CI; clustered by photo) | "
             "executed MACs/image (mean / p95, M) | MAC reduction vs dense | overlay fps mean | overlay fps p95 | "
             "single engine fps mean / p95 | agreement before fine-tune (400 views, %) | train s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("dense", "fbs", "static"):
        r = rows.get(name)
        if r is None:
            continue
        ci = r.get("vs_static", "")
        ov = r["overlay"]
        se = r.get("single_engine")
        eu = "—" if se is None else f"{se['fps_mean']:.1f} / {se['fps_p95']:.1f}"
        pre = f"{r['agreement_before_finetune']:.2f}" if "agreement_before_finetune" in r else "—"
        lines.append(f"| {name} | {1.0 if name == 'dense' else doc['density']} | {r['agreement']:.2f} | {ci} | "
                     f"{r['macs_mean'] / 1e6:.1f} / {r['macs_p95'] / 1e6:.1f} | {dense_m / r['macs_mean']:.2f}x | "
                     f"{ov['fps_mean']:.1f} | {ov['fps_p95']:.1f} | {eu} | {pre} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--part", choices=("fbs", "static"), help="only train (or load) that arm")
    ap.add_argument("--quick", action="store_true", help="smoke run: few crops and views, nothing cached")
    ap.add_argument("--density", type=float, default=DENSITY, help=f"FBS density of every gated layer ({DENSITY})")
    ap.add_argument("--prior-margin", type=float, default=PRIOR_MARGIN,
                    help=f"static_prior's margin ({PRIOR_MARGIN}; 0: no prior, the fitted predictors alone)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    quick = args.quick
    t0 = time.perf_counter()
    dense = zoo.load("mobilenet_v2", pretrained=True).eval()
    specs = capture(dense, SHAPE)
    n_crops = 2 * BATCH if quick else TRAIN_CROPS
    xtr = calibration_set(n_crops, size=TRAIN_SIZE, include_foolbox=False, seed=1)
    ytr = torch.zeros(n_crops, dtype=torch.long)  # unused: kd_alpha 1
    epochs = 1 if quick else EPOCHS
    ft = _train_cfg(epochs)
    density, margin = args.density, args.prior_margin
    cfg = FbsConfig(density=density, layers=GATED, train=ft, spread=SPREAD)
    masks = static_masks(dense, density)
    cache = None if quick else CACHE
    tag = "" if density == DENSITY else f"-d{round(100 * density)}"  # cache names of this density
    fbs_tag = "" if margin == PRIOR_MARGIN else f"-m{round(100 * margin)}"

    def train_fbs_model(m: nn.Module) -> dict[str, Any]:
        fit_predictors(m, xtr[:FIT_IMAGES], spread=SPREAD)
        if margin > 0:
            static_prior(m, masks, margin)
        with frozen_bn(m):
            res = train_fbs(m, dense, (xtr, ytr), cfg)
        return {"loss_first": res["history"][0] if res["history"] else None, "history": res["history"]}

    def train_static(m: nn.Module) -> dict[str, Any]:
        with frozen_bn(m):
            res = fit(m.train(), xtr, ytr, ft, teacher=dense, masks=param_masks(m, masks), desc="static finetune")
        return {"history": res.history}

    fs = _fidelity(64 if quick else 2000)
    views = fs.x
    sub = views[::5]  # 400 views over all 20 photos: the agreement before fine-tuning

    def arm(label: str, ref_sub: torch.Tensor | None = None) -> tuple[nn.Module, float, float]:
        """The arm's fine-tuned model (trained or loaded), its train seconds and its agreement on ``sub``
        before the fine-tune (against ``ref_sub``, the dense logits there; nan without it)."""
        if label == "fbs":
            pre_model = to_fbs(dense, cfg, SHAPE)
            fit_predictors(pre_model, xtr[:FIT_IMAGES], spread=SPREAD)
            fold_fbs_bn(static_prior(pre_model, masks, margin) if margin > 0 else pre_model)
            m, secs, _ = _cached(cache / f"mobilenetv2{tag}-fbs{fbs_tag}.pt" if cache else None,
                                 to_fbs(dense, cfg, SHAPE), train_fbs_model)
            m = fold_fbs_bn(m)
        else:
            pre_model = apply_masks(dense, masks)
            m, secs, _ = _cached(cache / f"mobilenetv2{tag}-static.pt" if cache else None,
                                 apply_masks(dense, masks), train_static)
        pre = float("nan") if ref_sub is None else \
            100.0 * float((_logits(pre_model, sub).argmax(1) == ref_sub.argmax(1)).double().mean())
        return m, secs, pre

    if args.part:
        arm(args.part)
        return 0
    rows_dir = (CACHE if not quick else Path("/tmp/fbs-mnv2-quick")) / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)

    def cached_row(label: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = rows_dir / f"mobilenetv2{'' if label == 'dense' else tag}-{label}-fp32.json"
        if path.is_file() and not quick:
            return dict(json.loads(path.read_text()))
        t = time.perf_counter()
        r = make()
        r["measure_s"] = round(time.perf_counter() - t, 1)
        atomic_write_json(path, r)
        return r

    ref_box: dict[str, torch.Tensor] = {}
    prog_box: dict[str, tuple[Program, tuple[EuStep, ...]]] = {}

    def program() -> tuple[Program, tuple[EuStep, ...]]:
        """The dense network's W8A8 single-engine program, calibrated on crops of the training photos at 224 px."""
        if "p" not in prog_box:
            calib = calibration_set(8 if quick else 64, size=SHAPE[1], include_foolbox=False, seed=2)
            prog_box["p"] = dense_program(copy.deepcopy(dense), "fp32", normalize(calib))
        return prog_box["p"]

    def dense_row() -> dict[str, Any]:
        r, logits = _row("dense", dense, specs, views, None, 0.0, program)
        ref_box["ref"] = logits
        return r

    rows = {"dense": cached_row("dense", dense_row)}
    ref = ref_box.get("ref")
    if ref is None:
        ref = _logits(dense, views)

    def arm_row(label: str) -> Callable[[], dict[str, Any]]:
        def make() -> dict[str, Any]:
            m, secs, pre = arm(label, ref[::5])
            r, _ = _row(label, m, specs, views, ref, secs, program)
            r["agreement_before_finetune"] = pre
            return r
        return make

    for label in ("fbs", "static"):
        rows[label] = cached_row(label + (fbs_tag if label == "fbs" else ""), arm_row(label))
    groups = fs.groups
    for label in ("dense", "fbs"):
        d, hw = paired_difference(_hits(rows[label]), _hits(rows["static"]))
        _, cw = clustered_paired_difference(_hits(rows[label]), _hits(rows["static"]), groups)
        rows[label]["vs_static"] = f"{d:+.2f} ± {hw:.2f} (± {cw:.2f})"
    doc = {"net": "mobilenetv2", "notes": NOTES, "weights": "torchvision ImageNet (mixq.zoo mobilenet_v2, pretrained)",
           "eval": f"fidelity_set({len(fs)}) at 224 px: top-1 agreement with the dense FP32 model",
           "train": {"crops": n_crops, "size": TRAIN_SIZE, "epochs": epochs, "batch": BATCH, "lr": LR,
                     "optimizer": OPTIMIZER, "kd_alpha": 1.0, "bn": "frozen (eval mode)",
                     "fit_images": FIT_IMAGES, "spread": SPREAD,
                     "prior_margin": margin, "l1": cfg.l1, "threads": 1},
           "layers": list(GATED), "downstream_counted": list(DOWNSTREAM), "density": density,
           "kept": {n: v["k"] for n, v in rows["fbs"]["densities"].items()}, "part": PART,
           "dense_macs": sum(s.macs for s in specs if s.is_compute),
           "rows": [rows[k] for k in ("dense", "fbs", "static")],
           "compute_s": round(time.perf_counter() - t0, 1)}
    if not quick:
        atomic_write_json(CACHE / f"rows-mobilenetv2{tag}{fbs_tag}.json", doc)
        if density == DENSITY and margin == PRIOR_MARGIN:  # the default rows; variants stay as recorded
            res = RESULTS / "fbs_mobilenetv2.json"
            old = json.loads(res.read_text()) if res.is_file() else {}
            atomic_write_json(res, {**doc, "variants": old.get("variants", {})})
    print(markdown(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
