"""`mixq run`: the main job on the bundled default, end to end.

Load the CNV model (shipped Fashion-MNIST weights) and the shipped Fashion-MNIST
test subset, evaluate FP32, build the default plan, quantize (BN fold, layer
swap, activation calibration on training images), evaluate, and write
``summary.json``, ``plan.json`` and a self-contained ``report.html``.
Each stage that has landed adds its part to the summary.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import api, data, zoo
from mixq.algorithms.msq import MSQConfig, msq_plan
from mixq.algorithms.ptq import quantize_report
from mixq.engine.verify import verify
from mixq.errors import CheckFailed, MixqError
from mixq.formats import parse_format
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.graph.spec import LayerSpec
from mixq.hw import estimate
from mixq.io import atomic_write_json
from mixq.plan import QuantPlan, load_plan, save_plan
from mixq.report import DesignView, Report, build_run_report
from mixq.tasks.data import CALIB_PATH, fmnist_eval


@dataclass(frozen=True)
class RunConfig:
    """What `mixq run` does. Formats use the short grammar of `mixq.formats.parse_format`."""

    model: str = "cnv"
    dataset: str = "fmnist-subset"
    target_part: str = "xc7z020"
    weight: str = "fixed8"
    act: str = "ufixed8"
    calib_images: int = 512
    verify_images: int = 128
    msq_bits: int = 4
    msq_ratio: float = 0.5
    search: bool = True
    search_points: int = 2
    search_max_drop: float = 1.0
    search_eval_images: int = 1000
    rtl_images: int = 16  # the searched design's Verilog simulated on this many test images (0: no RTL check)
    seed: int = 0


Step = Callable[[str], None]

@contextmanager
def _progress(total: int) -> Iterator[Step]:
    """One progress task for the job (mixq.progress picks bar, log lines, JSON or nothing)."""
    from mixq import progress

    with progress.task("mixq run", total=total) as t:
        def step(msg: str) -> None:
            t.advance(stage=msg)

        yield step


def _load_eval_data(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eval images, eval labels, calibration images), normalised."""
    if cfg.model != "cnv":
        raise MixqError(f"mixq run: model {cfg.model!r} is not supported by the demo job (use 'cnv')")
    try:
        return fmnist_eval(cfg.dataset, cfg.calib_images)
    except MixqError as e:
        raise MixqError(f"mixq run: {e}") from None


def run(out: str | Path = "runs/demo", cfg: RunConfig | None = None) -> dict[str, Any]:
    """Run the main job; returns the summary (also written to ``out/summary.json``).

    Progress goes through :mod:`mixq.progress`. Outputs are written at the end, the
    search's files included, so an interrupted run leaves no partial result set behind.
    """
    cfg = cfg or RunConfig()
    out = Path(out)
    t0 = time.perf_counter()
    weight_fmt, act_fmt = parse_format(cfg.weight), parse_format(cfg.act)  # fail fast on a bad format
    torch.manual_seed(cfg.seed)
    for partial in (_staging(out), _staging(out, "rtl")):  # left by an interrupted run
        shutil.rmtree(partial, ignore_errors=True)
    rtl_step = cfg.search and cfg.rtl_images > 0
    with _progress(7 + cfg.search + rtl_step) as step:
        step("loading model and data")
        model = zoo.load(cfg.model, pretrained=True)
        x, y, calib = _load_eval_data(cfg)
        step("evaluating FP32")
        fp32_acc = api.evaluate(model, x, y)
        step("capturing the graph")
        folded = fold_bn(model)
        specs = capture(folded, tuple(x.shape[1:]))
        step("building the plan")
        plan = api.default_plan(cfg.model, folded, calib[:64], weight=weight_fmt, act=act_fmt)
        step("quantizing (calibration)")
        qmodel = api.quantize(folded, plan, calib, fold=False)
        step("verifying the integer engine")
        ver = verify(qmodel, x[: cfg.verify_images])
        step("MSQ design, hardware estimates, report")
        msq = msq_plan(cfg.model, folded, calib[:64], MSQConfig(bits=cfg.msq_bits, ratio=cfg.msq_ratio))
        # GPTQ rounding; each layer keeps its number of SP2 rows (the hardware's ρ), chosen on the output error
        ptq = quantize_report(folded, msq, calib, "gptq", msq_rows="output")
        msq, q_msq = ptq.plan, ptq.model
        ver_msq = verify(q_msq, x[: cfg.verify_images])
        designs = [
            _design(f"{cfg.weight} weights, {cfg.act} activations (headline)", "plan.json", plan, qmodel,
                    x, y, specs, cfg.target_part),
            _design(f"MSQ W{cfg.msq_bits}: fixed{cfg.msq_bits}n + sp2_{cfg.msq_bits} rows at rho={cfg.msq_ratio}, "
                    "first/last fixed8n, ufixed8 activations, GPTQ", "plan_msq.json", msq, q_msq, x, y, specs,
                    cfg.target_part),
        ]
        search: dict[str, Any] | None = None
        rtl: dict[str, Any] | None = None
        if cfg.search:
            step(f"searching a plan for {cfg.target_part}")
            q_searched = None
            try:
                search, searched, q_searched = _search(cfg, folded, calib, x, y, specs, out)
                designs.append(searched)
            except MixqError as e:  # e.g. no plan within the drop budget: keep the rest of the run
                search = {"part": cfg.target_part, "error": str(e)}
            if rtl_step:
                step("building the searched design's Verilog and simulating it")
                rtl = (_rtl_check(cfg, q_searched, designs[-1]["hardware_layers"], x, out)
                       if q_searched is not None else {"skipped": "no searched design"})
        summary: dict[str, Any] = {
            "model": cfg.model,
            "dataset": cfg.dataset,
            "eval_images": int(x.shape[0]),
            "target_part": cfg.target_part,
            "fp32_accuracy": round(fp32_acc, 3),
            "quant_accuracy": designs[0]["accuracy"],
            "accuracy_drop": round(fp32_acc - designs[0]["accuracy"], 3),
            "size_bytes_fp32": api.model_size_bytes(model),
            "size_bytes_quant": designs[0]["size_bytes"],
            "macs_per_image": sum(s.macs for s in specs),
            "layers": api.layer_formats(qmodel),
            "hardware": designs[0]["hardware"],
            "verify": {k: v for k, v in ver.items() if k != "layers"},
            "verify_msq": {k: v for k, v in ver_msq.items() if k != "layers"},
            "designs": designs,
            "config": asdict(cfg),
        }
        if search is not None:
            summary["search"] = search
        if rtl is not None:
            summary["rtl"] = rtl
        summary["compression"] = round(summary["size_bytes_fp32"] / summary["size_bytes_quant"], 2)
        summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
        out.mkdir(parents=True, exist_ok=True)
        for part in ("search", "rtl"):
            if _staging(out, part).is_dir():
                shutil.rmtree(out / part, ignore_errors=True)
                _staging(out, part).rename(out / part)
        save_plan(plan, out / "plan.json")
        save_plan(msq, out / "plan_msq.json")
        rep = _report(summary, folded, specs, [(plan, qmodel), (msq, q_msq)], out)
        rep.write(out / "report.html")
        atomic_write_json(out / "summary.json", summary)
    if rtl is not None and rtl.get("mismatching_elements", 0):
        raise CheckFailed(f"mixq run: the searched design's Verilog differs from the integer engine "
                          f"(see {out / 'rtl' / 'build.json'})")
    return summary


def _staging(out: Path, part: str = "search") -> Path:
    """Where the search (the RTL build) writes its files until the run's outputs are written together."""
    return out / f".{part}.partial"


def _rtl_check(cfg: RunConfig, qmodel: nn.Module, hw_layers: list[dict[str, Any]], x: torch.Tensor,
               out: Path) -> dict[str, Any]:
    """The searched design as a whole streaming accelerator in Verilog (:mod:`mixq.rtl.build`) at the folding
    the estimator chose, simulated in Verilator on ``cfg.rtl_images`` test images with randomized backpressure
    and compared with the integer engine, every output element (written to ``out/rtl``)."""
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine
    from mixq.rtl.build import available, build_and_check, check_summary

    if not available("verilator"):
        return {"skipped": "verilator is not installed (make run installs it: apt-get install verilator)"}
    n = min(cfg.rtl_images, int(x.shape[0]))
    folding = {r["name"]: (int(r["pe"]), int(r["simd"])) for r in hw_layers if r.get("macs") and r.get("pe")}
    try:
        im = to_integer(qmodel, x[:1])
        b = build_and_check(im, IntEngine(im)(x[:n], keep=True).values, cfg.model, _staging(out, "rtl"), n,
                            folding, part=cfg.target_part, meta={"plan": "search/plan.json"})
    except MixqError as e:  # a design the network builder does not take: say why, keep the run
        return {"skipped": str(e)}
    res = check_summary(b)
    res["folder"] = str(out / "rtl")
    return res


def _search(cfg: RunConfig, folded: nn.Module, calib: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            specs: list[LayerSpec], out: Path) -> tuple[dict[str, Any], dict[str, Any], nn.Module]:
    """Hardware-aware search on ``cfg.target_part``: candidates are selected on labelled *training*
    images (never the test images), the chosen plan and the uniform W8A8 / W4A4 baselines are then
    evaluated on the test images. Writes ``search/plan.json``, ``search/pareto.json`` and ``search/pareto.png``."""
    from mixq.algorithms.search import AccuracyEval, SearchConfig, SearchSpace, SensitivityConfig, search_plan
    from mixq.algorithms.search.output import write_outputs

    xs, ys = data.load_fmnist_subset(CALIB_PATH)
    n = min(cfg.search_eval_images, xs.shape[0])
    eval_fn = AccuracyEval(data.normalize_gray(xs[:n]), torch.as_tensor(ys[:n]))
    scfg = SearchConfig(space=SearchSpace(wbits=(2, 3, 4, 6, 8), abits=(4, 6, 8), rhos=(0.0, 0.5)),
                        sensitivity=SensitivityConfig(images=16, hutchinson_samples=4),
                        points=cfg.search_points, baselines=((8, 8), (4, 4)), executor="serial")
    res = search_plan(cfg.model, folded, calib, eval_fn, cfg.target_part, max_drop=cfg.search_max_drop, cfg=scfg)
    write_outputs(res, _staging(out))  # moved to out/search with the other outputs at the end
    rows = []
    quantized = []
    for label, pt in [("searched", res.chosen), *res.baselines.items()]:
        q = api.quantize(folded, pt.plan, calib, fold=False)
        quantized.append(q)
        rows.append({"design": label if label == "searched" else f"uniform {label.upper()}",
                     "fps": round(pt.fps, 1), "fits": pt.fits, "lut": round(pt.resources.get("lut", 0.0)),
                     "dsp": pt.resources.get("dsp", 0.0), "bram": pt.resources.get("bram", 0.0),
                     "search_accuracy": round(pt.accuracy, 3), "test_accuracy": round(api.evaluate(q, x, y), 3),
                     "size_bytes": api.model_size_bytes(q)})
    est = estimate(specs, res.plan, cfg.target_part, "streaming", fold="plan")
    design = {
        "name": f"searched on {cfg.target_part} (max drop {cfg.search_max_drop:g} point on training images)",
        "plan": "search/plan.json",
        "accuracy": rows[0]["test_accuracy"],
        "size_bytes": rows[0]["size_bytes"],
        "hardware": est.summary(),
        "hardware_layers": est.to_dict()["layers"],
    }
    summary = {"part": res.part, "chosen": res.chosen.label, "max_drop": cfg.search_max_drop,
               "search_images": n, "reference_search_accuracy": round(res.reference_accuracy, 3),
               "best_reachable_fps": round(res.best_fps, 1), "compare": rows,
               "pareto": [{"fps": round(p.fps, 1), "search_accuracy": round(p.accuracy, 3)} for p in res.pareto],
               "timings_s": {k: round(v, 2) for k, v in res.timings.items()}}
    return summary, design, quantized[0]


def _design(name: str, plan_file: str, plan: QuantPlan, qmodel: nn.Module, x: torch.Tensor, y: torch.Tensor,
            specs: list[LayerSpec], part: str) -> dict[str, Any]:
    """One evaluated design: accuracy, storage and the hardware estimate (streaming template), with its
    per-layer rows (``hardware_layers``: cycles, folding, resources of each layer) for the report."""
    est = estimate(specs, plan, part, "streaming")
    return {
        "name": name,
        "plan": plan_file,
        "accuracy": round(api.evaluate(qmodel, x, y), 3),
        "size_bytes": api.model_size_bytes(qmodel),
        "hardware": est.summary(),
        "hardware_layers": est.to_dict()["layers"],
    }


def _report(summary: dict[str, Any], folded: nn.Module, specs: list[LayerSpec],
            designs: list[tuple[QuantPlan, nn.Module]], out: Path) -> Report:
    """The run's report (`mixq.report.build_run_report`): the headline and MSQ designs with their quantized
    models, and the searched design (its plan read back from ``search/plan.json``) when the search found one."""
    cfg = summary["config"]
    views = [DesignView(f"headline W{parse_format(cfg['weight']).storage_bits}A{parse_format(cfg['act']).storage_bits}",
                        *designs[0]),
             DesignView(f"MSQ W{cfg['msq_bits']}", *designs[1])]
    if len(summary["designs"]) > len(views):
        views.append(DesignView("searched", load_plan(out / summary["designs"][len(views)]["plan"])))
    return build_run_report(summary, views, folded, specs)
