"""Shared parts of the PTQ benchmarks (``ptq_mobilenetv2.py``, ``ptq_cnv.py``): fidelity metrics, the
mixq and Brevitas runners, and the result table.

Both toolkits quantize the same BN-folded float model with the same scheme: every Conv2d/Linear
gets fake-quantized weights and a fake-quantized *input* (Brevitas' ``layerwise`` backend;
mixq's ``QConv2d``/``QLinear``), symmetric narrow-range weights with float scales, per-tensor
activations. Wall time covers the quantization only (folding, equalization, calibration, bias
correction, rounding), not the evaluation; both run in the same process, one intra-op thread.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.algorithms.msq import assign_rows
from mixq.algorithms.ptq import GPTQConfig, quantize_report
from mixq.formats import FixedPoint, SumOfPowers, parse_format
from mixq.graph.ops import signed_input_layers
from mixq.io import atomic_write_json, atomic_write_text
from mixq.plan import LayerPlan, QuantPlan
from mixq.quant import sqnr_db


@dataclass
class Row:
    """One benchmark configuration's result."""

    config: str
    tool: str
    seconds: float
    agreement: float  # % of eval inputs whose top-1 class equals the FP32 model's
    sqnr_db: float  # logit SQNR over the eval inputs
    labelled_top1: float  # % correct on the labelled images (ImageNet: the 20 foolbox images)
    accuracy: float | None = None  # % on a real labelled test set (CNV: full Fashion-MNIST test)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


EVAL_THREADS = 1  # intra-op threads while evaluating (``--eval-threads``); quantization keeps one


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, EVAL_THREADS))
    try:
        return torch.cat([model(x[i : i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])
    finally:
        torch.set_num_threads(threads)


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Difference in percentage points of two paired hit rates (``a``, ``b``: per-input booleans on the
    same inputs) and the half width of its 95% confidence interval (normal approximation of the
    paired difference: only the inputs where exactly one of them hits carry information).

    >>> d, hw = paired_difference(torch.tensor([True] * 98 + [False] * 2), torch.tensor([True] * 100))
    >>> round(d, 2), round(hw, 2)
    (-2.0, 2.74)
    """
    x = a.double() - b.double()
    n = x.numel()
    mean = float(x.mean())
    var = max(float((x * x).mean()) - mean * mean, 0.0) / max(n, 1)
    return 100.0 * mean, 100.0 * 1.96 * var ** 0.5


def fidelity(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement in %, logit SQNR in dB) of ``out`` against the float model's ``ref``."""
    agree = 100.0 * float((out.argmax(1) == ref.argmax(1)).float().mean())
    return agree, float(sqnr_db(ref, out))


@dataclass
class Bench:
    """The float model and the data a benchmark evaluates on."""

    model: nn.Module
    calib: torch.Tensor
    x_eval: torch.Tensor  # fidelity inputs
    x_lab: torch.Tensor  # labelled inputs
    y_lab: torch.Tensor
    x_test: torch.Tensor | None = None  # optional full labelled test set
    y_test: torch.Tensor | None = None
    eval_batch: int = 16
    x_more: torch.Tensor | None = None  # optional second, larger fidelity set (CNV: held-out training images)
    ref_eval: torch.Tensor = field(init=False)
    ref_lab: torch.Tensor = field(init=False)
    ref_more: torch.Tensor | None = field(init=False, default=None)
    hits: dict[tuple[str, str], torch.Tensor] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ref_eval = logits(self.model, self.x_eval, self.eval_batch)
        self.ref_lab = self.ref_eval if self.x_lab is self.x_eval else logits(self.model, self.x_lab, self.eval_batch)
        if self.x_more is not None:
            self.ref_more = logits(self.model, self.x_more, self.eval_batch)

    def measure(self, config: str, tool: str, qmodel: nn.Module, seconds: float, notes: str = "",
                extra: dict[str, Any] | None = None) -> Row:
        out = logits(qmodel, self.x_eval, self.eval_batch)
        agree, sq = fidelity(self.ref_eval, out)
        extra = dict(extra or {})
        hits = out.argmax(1) == self.ref_eval.argmax(1)
        if self.x_more is not None and self.ref_more is not None:
            more = logits(qmodel, self.x_more, self.eval_batch)
            a_more, sq_more = fidelity(self.ref_more, more)
            extra["agreement_more"], extra["sqnr_more"] = round(a_more, 2), round(sq_more, 2)
            hits = torch.cat([hits, more.argmax(1) == self.ref_more.argmax(1)])
        self.hits[(config, tool)] = hits
        lab = out if self.x_lab is self.x_eval else logits(qmodel, self.x_lab, self.eval_batch)
        top1 = 100.0 * float((lab.argmax(1) == self.y_lab).float().mean())
        acc = None
        if self.x_test is not None and self.y_test is not None:
            acc = 100.0 * float((logits(qmodel, self.x_test, 500).argmax(1) == self.y_test).float().mean())
        row = Row(config, tool, round(seconds, 2), round(agree, 2), round(sq, 2), round(top1, 2),
                  None if acc is None else round(acc, 2), notes, extra)
        print(f"  {tool:9s} {config:38s} agree {row.agreement:6.2f}%  sqnr {row.sqnr_db:6.2f} dB  "
              f"top1 {row.labelled_top1:6.2f}%" + (f"  acc {row.accuracy:6.2f}%" if acc is not None else "")
              + f"  {row.seconds:8.1f} s", flush=True)
        return row

    def versus(self, config: str, tool: str = "mixq", other: str = "brevitas") -> dict[str, Any]:
        """``tool``'s top-1 agreement minus ``other``'s on ``config``, paired over every fidelity input
        (both sets), with the half width of its 95% confidence interval, in points."""
        a, b = self.hits[(config, tool)], self.hits[(config, other)]
        d, hw = paired_difference(a, b)
        return {"points": round(d, 3), "ci95": round(hw, 3), "inputs": int(a.numel())}

    def float_row(self) -> Row:
        top1 = 100.0 * float((self.ref_lab.argmax(1) == self.y_lab).float().mean())
        acc = None
        if self.x_test is not None and self.y_test is not None:
            acc = round(100.0 * float((logits(self.model, self.x_test, 500).argmax(1) == self.y_test)
                                      .float().mean()), 2)
        extra: dict[str, Any] = {"agreement_more": 100.0, "sqnr_more": float("inf")} if self.x_more is not None else {}
        return Row("FP32", "float", 0.0, 100.0, float("inf"), round(top1, 2), acc, extra=extra)


def make_plan(model_name: str, model: nn.Module, sample: torch.Tensor, weight: str, granularity: str, *,
              weight_observer: str = "minmax", first_last: str | None = None, alt: str | None = None,
              ratio: float = 0.0) -> QuantPlan:
    """Every Conv2d/Linear: ``weight`` at ``granularity``, 8-bit per-tensor input activations (signed
    where the sample goes negative), optionally ``first_last`` weights on the first and last layer
    and ``alt`` rows at ratio ρ (MSQ; the recipe assigns the rows)."""
    order, signed = signed_input_layers(model, sample)
    layers = {}
    for i, n in enumerate(order):
        act = FixedPoint(8, signed=n in signed)
        edge = first_last is not None and i in (0, len(order) - 1)
        layers[n] = LayerPlan(weight=parse_format(first_last if edge else weight),
                              weight_alt=None if edge or alt is None else parse_format(alt),
                              alt_ratio=0.0 if edge or alt is None else ratio, weight_granularity=granularity,
                              weight_observer=weight_observer, act=act)
    return QuantPlan(model=model_name, layers=layers)


def run_mixq(bench: Bench, config: str, plan: QuantPlan, recipe: str, notes: str = "",
             **overrides: Any) -> Row:
    t = time.perf_counter()
    res = quantize_report(bench.model, plan, bench.calib, recipe, **overrides)
    seconds = time.perf_counter() - t
    extra: dict[str, Any] = {"recipe": dataclasses.asdict(res.recipe),
                             "timings": {k: round(v, 2) for k, v in res.timings.items()}}
    if "adaround" in res.details:
        ada = res.details["adaround"]
        extra["adaround_rec_ratio"] = round(sum(v["rec_adaround"] for v in ada.values())
                                            / max(sum(v["rec_nearest"] for v in ada.values()), 1e-30), 4)
    if "gptq" in res.details:
        gq = res.details["gptq"]
        extra["gptq_error_ratio"] = round(sum(v["error_gptq"] for v in gq.values())
                                          / max(sum(v["error_nearest"] for v in gq.values()), 1e-30), 4)
    alt = [(len(lp.alt_rows or ()), res.model.get_submodule(n).weight.shape[0]) for n, lp in res.plan.items()
           if lp.weight_alt is not None]
    if alt:
        sp2, total = sum(a for a, _ in alt), sum(t for _, t in alt)
        extra["alt_rows"] = [sp2, total]
        kinds = sorted({"SP2" if isinstance(lp.weight_alt, SumOfPowers) else str(lp.weight_alt)
                        for _, lp in res.plan.items() if lp.weight_alt is not None})
        share = f"{'/'.join(kinds)} on {sp2} of {total} rows ({100 * sp2 / max(total, 1):.1f}%)"
        notes = "; ".join(n for n in (notes, share) if n)
    return bench.measure(config, "mixq", res.model, seconds, notes, extra)


# ---------------------------------------------------------------------------------------------- Brevitas
def brevitas_available() -> str | None:
    """Brevitas' version, or None when it (or what its examples need) is not installed."""
    try:
        import brevitas
        from brevitas_examples.imagenet_classification.ptq import ptq_common  # noqa: F401
    except Exception as exc:  # say why, or a missing dependency silently drops every Brevitas row
        print(f"Brevitas rows skipped: {type(exc).__name__}: {exc} (pip install -e '.[bench]')", flush=True)
        return None
    return str(brevitas.__version__)


@dataclass(frozen=True)
class BrevitasConfig:
    """A Brevitas PTQ run with its ``layerwise`` backend (quantized weights and inputs of every
    Conv2d/Linear; first and last layer at ``first_last_bits``)."""

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = False
    weight_param: str = "stats"  # "stats" (max |w|) or "mse"
    act_percentile: float = 99.999
    equalize: bool = False  # graph equalization (CLE) with bias merging; ReLU6 -> ReLU
    bias_correction: bool = False
    learned_round: bool = False  # AdaRound ("learned_round" layerwise)
    learned_round_iters: int = 1000
    gptq: bool = False  # GPTQ (act order, quantized activations in the layer inputs)
    first_last_bits: int = 8


def run_brevitas(bench: Bench, config: str, cfg: BrevitasConfig, first_layer: Callable[[nn.Module], bool],
                 last_layer: Callable[[nn.Module], bool], notes: str = "") -> Row:
    import warnings

    warnings.filterwarnings("ignore")
    from brevitas.graph.quantize import layerwise_quantize, preprocess_for_quantize
    from brevitas_examples.imagenet_classification.ptq import ptq_common as pc

    pc.tqdm = lambda it, *a, **k: it  # no progress bars

    t = time.perf_counter()
    model = copy.deepcopy(bench.model).eval()
    model = preprocess_for_quantize(model, equalize_iters=20 if cfg.equalize else 0, equalize_merge_bias=True,
                                    merge_bn=True, relu6_to_relu=cfg.equalize)
    from brevitas.inject import value

    edge_bits, base_bits = cfg.first_last_bits, cfg.weight_bits

    @value  # type: ignore[misc]
    def weight_bit_width(module: nn.Module) -> int:  # resolved per layer by Brevitas' injector
        return edge_bits if first_layer(module) or last_layer(module) else base_bits

    maps = pc.create_quant_maps(
        dtype=torch.float32, device="cpu", uint_sym_act_for_unsigned_values=True, bias_bit_width=None,
        weight_param_method=cfg.weight_param, weight_scale_type="float_scale", weight_quant_type="sym",
        weight_quant_granularity="per_channel" if cfg.per_channel else "per_tensor", weight_narrow_range=True,
        weight_quant_format="int", act_quant_format="int", act_scale_type="float_scale",
        act_param_method="stats", act_quant_type="sym", act_quant_granularity="per_tensor",
        act_quant_percentile=cfg.act_percentile, act_scale_computation_type="static",
        weight_bit_width=weight_bit_width, act_bit_width=cfg.act_bits)
    qmodel = layerwise_quantize(model, compute_layer_map=maps[1])
    loader = [(bench.calib[i : i + 32], None) for i in range(0, bench.calib.shape[0], 32)]
    pc.calibrate(loader, qmodel)
    if cfg.learned_round:
        from argparse import Namespace

        from brevitas_examples.imagenet_classification.ptq.learned_round_utils import apply_learned_round

        args = Namespace(learned_round="hard_sigmoid", learned_round_mode="layerwise", learned_round_iters=
                         cfg.learned_round_iters, learned_round_lr=1e-3, learned_round_batch_size=1,
                         learned_round_loss="regularised_mse", learned_round_lr_scheduler=None)
        apply_learned_round(qmodel, [(x, None) for x, _ in loader], args)
    if cfg.gptq:
        with torch.no_grad():
            qmodel(loader[0][0])  # initializes the weight quantizers (GPTQ refuses to start before)
        pc.apply_gptq(loader, qmodel, act_order=True, use_quant_activations=True)
    if cfg.bias_correction:
        pc.apply_bias_correction(loader, qmodel)
    seconds = time.perf_counter() - t
    return bench.measure(config, "brevitas", qmodel, seconds, notes)


# ---------------------------------------------------------------------------------------------- table
def markdown_table(rows: list[Row], labelled: str = "top-1 labelled (%)", more: str = "second set") -> str:
    """The result table; with a second fidelity set (``extra["agreement_more"]``) its agreement and
    SQNR get columns, and mixq rows measured beside Brevitas the paired difference (``vs_brevitas``)."""
    has_more = any("agreement_more" in r.extra for r in rows)
    has_vs = any("vs_brevitas" in r.extra for r in rows)
    cols = ["config", "tool", "top-1 agreement w/ FP32 (%)", "logit SQNR (dB)", labelled]
    cols += [f"agreement, {more} (%)", f"SQNR, {more} (dB)"] if has_more else []
    cols += ["agreement − Brevitas, paired over every fidelity input (points, 95% CI)"] if has_vs else []
    cols += ["PTQ wall time (s)", "notes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        sq = "∞" if r.sqnr_db == float("inf") else f"{r.sqnr_db:.2f}"
        cells = [r.config, r.tool, f"{r.agreement:.2f}", sq, f"{r.labelled_top1:.2f}"]
        if has_more:
            a, q = r.extra.get("agreement_more"), r.extra.get("sqnr_more")
            cells += ["" if a is None else f"{a:.2f}", "" if q is None else ("∞" if q == float("inf") else f"{q:.2f}")]
        if has_vs:
            v = r.extra.get("vs_brevitas")
            cells.append("" if v is None else f"{v['points']:+.2f} ± {v['ci95']:.2f}")
        cells += [f"{r.seconds:.1f}", r.notes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_rows(old: list[dict[str, Any]], new: list[Row]) -> list[dict[str, Any]]:
    """``old`` result rows (dicts) with the (config, tool) rows of ``new`` replaced in place or appended:
    a ``--only`` run updates its configurations and keeps the others."""
    fresh = {(r.config, r.tool): dataclasses.asdict(r) for r in new}
    out = [fresh.pop((r["config"], r["tool"]), r) for r in old]
    return out + list(fresh.values())


def parse_cli(description: str, quick_help: str, results: Path) -> argparse.Namespace:
    """The PTQ benchmarks' shared command line; one intra-op thread, seed 0. Adds ``keys`` (the
    ``--only`` list) and ``brevitas`` (its version, or None when absent or ``--no-brevitas``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--only", default="", help="comma-separated config keys to run (default: all)")
    ap.add_argument("--no-brevitas", action="store_true")
    ap.add_argument("--out", type=Path, default=results)
    ap.add_argument("--eval-threads", type=int, default=1,
                    help="threads for the fidelity evaluation only (timed quantization stays on one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    global EVAL_THREADS
    EVAL_THREADS = max(1, args.eval_threads)
    torch.manual_seed(0)
    args.keys = [k for k in args.only.split(",") if k]
    args.brevitas = None if args.no_brevitas else brevitas_available()
    return args


@dataclass
class ResultWriter:
    """Writes ``<name>[_quick].json`` and ``.md`` after every configuration; a ``--only`` run merges its
    rows into the existing results (and is named in them)."""

    out: Path
    name: str
    quick: bool
    only: str
    meta: dict[str, Any]
    title: str
    intro: str
    labelled: str = "top-1 labelled (%)"
    notes: tuple[str, ...] = ()
    more: str = "second set"  # column label of the second fidelity set, where the bench has one

    def __post_init__(self) -> None:
        suffix = "_quick" if self.quick else ""
        self.json_path = self.out / f"{self.name}{suffix}.json"
        self.md_path = self.out / f"{self.name}{suffix}.md"
        old = json.loads(self.json_path.read_text()) if self.only and self.json_path.is_file() else {}
        self.old_rows: list[dict[str, Any]] = old.get("rows", [])
        self.updated_by: list[str] = old.get("updated_by", []) + [f"--only {self.only}"] if self.old_rows else []
        # a merged run without Brevitas keeps the version its Brevitas rows were measured with
        for k, v in self.meta.items():
            if v is None and old.get(k) is not None:
                self.meta[k] = old[k]

    def __call__(self, rows: list[Row]) -> None:
        merged = merge_rows(self.old_rows, rows) if self.old_rows else [dataclasses.asdict(r) for r in rows]
        command = f"python benchmarks/{self.name}.py" + (" --quick" if self.quick else "")
        result = {"benchmark": self.name, "command": command, "updated_by": self.updated_by, **self.meta,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.platform(),
                  "date": time.strftime("%Y-%m-%d"), "rows": merged}
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.json_path, result)
        runs = ", ".join(f"`{u}`" if u.startswith("--") else u for u in self.updated_by)
        merged_note = f" (rows of {runs} re-run later and merged)" if runs else ""
        md = [f"## {self.title} (`benchmarks/{self.name}.py`)", "",
              f"Command: `{command}`{merged_note}; torch {torch.__version__}, Brevitas {self.meta.get('brevitas')}, "
              f"one thread. {self.intro}", "",
              markdown_table([Row(**d) for d in merged], labelled=self.labelled, more=self.more), "", *self.notes]
        atomic_write_text(self.md_path, "\n".join(md))
        print(f"  [{len(rows)} rows written]", flush=True)


# ---------------------------------------------------------------------------------------------- the suite
# Round-to-nearest W4 + bias correction: two passes of empirical correction (the second sees the
# corrected layers before it; on MobileNetV2 W4A8 it raised top-1 agreement from 74.6% to 80.0%).
BC2: dict[str, Any] = {"bias_correction": "empirical", "bias_passes": 2}
BC2_NOTE = "empirical bias correction, 2 passes"
BC1: dict[str, Any] = {"bias_correction": "empirical"}  # after AdaRound (not the recipe's default any more)
# the minmax recipe's weight scales (``weight_scales="auto"``) and the plan's alone
AUTO_NOTE = ("mixq: the plan's MSE scales, then output-aware scales below 8 bits (minmax recipe default); "
             "Brevitas: MSE scales")
AUTO_SHORT = "output-aware weight scales below 8 bits (minmax recipe default)"
DFQ_NOTE = ("mixq: activation-aware CLE + residual streams + output-aware activation ranges + empirical bias "
            "correction (dfq_empirical recipe); Brevitas: graph equalization + bias correction")
MSE_NOTE = "MSE weight scales only (weight_scales='plan')"
# the AdaRound rows measured before the adaround recipe started from output-aware scales
PLAN_SCALES: dict[str, Any] = {"weight_scales": "plan"}

def run_suite(bench: Bench, model_name: str, first: Callable[[nn.Module], bool], last: Callable[[nn.Module], bool],
              ada: Any, datafree: Any, *, gptq: Any = None, learned_round_iters: int = 1000,
              only: list[str] | None = None,
              brevitas: bool = True, on_rows: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Every benchmark configuration on ``bench`` (mixq, then Brevitas' closest equivalent where
    one exists); ``only`` restricts to the given config keys; ``on_rows`` gets the rows so far after
    every configuration (to write partial results). W4 configs keep 8-bit weights on
    the first and last layer (both tools)."""
    sample = bench.calib[:8]
    model = bench.model

    def plan(weight: str, gran: str, **kw: Any) -> QuantPlan:
        return make_plan(model_name, model, sample, weight, gran, **kw)

    w8t, w8c = plan("fixed8n", "tensor"), plan("fixed8n", "channel")
    w4 = plan("fixed4n", "channel", weight_observer="mse", first_last="fixed8n")
    sp2 = plan("sp2_4", "channel", weight_observer="mse", first_last="fixed8n")
    msq = {r: plan("fixed4n", "channel", weight_observer="mse", first_last="fixed8n", alt="sp2_4", ratio=r)
           for r in (0.5, 0.67)}
    b8 = BrevitasConfig(weight_bits=8, act_percentile=100.0)
    b4 = BrevitasConfig(weight_bits=4, per_channel=True, weight_param="mse", act_percentile=100.0)
    rep = dataclasses.replace
    # key: (label, plan, recipe, recipe overrides, notes, Brevitas config or None)
    configs: dict[str, tuple[str, QuantPlan, str, dict[str, Any], str, BrevitasConfig | None]] = {
        "w8a8_tensor": ("W8A8 per-tensor, naive", w8t, "minmax", {}, "", b8),
        "w8a8_tensor_cle": ("W8A8 per-tensor + CLE", w8t, "minmax", {"cle": True, "stream_equalize": True},
                            "mixq: DFQ's CLE rule with exact ReLU6 (per-channel clip), residual streams equalized "
                            "(activation-aware CLE needs BC: 89.6% / 12.8 dB on MobileNetV2 without it); Brevitas: "
                            "ReLU6 -> ReLU, graph equalization", rep(b8, equalize=True)),
        "w8a8_tensor_cle_bc": ("W8A8 per-tensor + CLE + bias corr.", w8t, "dfq_empirical", {}, DFQ_NOTE,
                               rep(b8, equalize=True, bias_correction=True)),
        "w8a8_tensor_dfq": ("W8A8 per-tensor + DFQ (data-free BC)", w8t, "dfq", {},
                            "activation-aware CLE + residual streams + output-aware activation ranges + analytic "
                            "bias correction from BN statistics",
                            None),
        "w8a8_channel": ("W8A8 per-channel", w8c, "minmax", {}, "", rep(b8, per_channel=True)),
        "w4a8_rtn": ("W4A8 fixed per-channel, nearest", w4, "minmax", {}, AUTO_NOTE, b4),
        "w4a8_rtn_bc": ("W4A8 fixed per-channel, nearest + BC", w4, "minmax", BC2, f"{AUTO_NOTE}; {BC2_NOTE}",
                        rep(b4, bias_correction=True)),
        # the same with the plan's MSE scales alone: the weight-only method both tools share
        "w4a8_rtn_mse": ("W4A8 fixed per-channel, nearest, MSE scales", w4, "minmax", PLAN_SCALES, MSE_NOTE, None),
        "w4a8_rtn_mse_bc": ("W4A8 fixed per-channel, nearest + BC, MSE scales", w4, "minmax", {**PLAN_SCALES, **BC2},
                            f"{MSE_NOTE}; {BC2_NOTE}", None),
        "w4a8_adaround": ("W4A8 fixed per-channel, AdaRound", w4, "adaround",
                          {"adaround": ada, "bias_correction": "none", **PLAN_SCALES}, "",
                          rep(b4, learned_round=True, learned_round_iters=learned_round_iters)),
        "w4a8_adaround_bc": ("W4A8 fixed per-channel, AdaRound + BC", w4, "adaround",
                             {"adaround": ada, **BC1, **PLAN_SCALES}, "",
                             rep(b4, learned_round=True, learned_round_iters=learned_round_iters,
                                 bias_correction=True)),
        "w4a8_sp2": ("W4A8 all-SP2", sp2, "minmax", {}, AUTO_SHORT, None),
        "w4a8_sp2_bc": ("W4A8 all-SP2 + BC", sp2, "minmax", BC2, f"{AUTO_SHORT}; {BC2_NOTE}", None),
        "w4a8_sp2_adaround_bc": ("W4A8 all-SP2, AdaRound + BC", sp2, "adaround",
                                 {"adaround": ada, **BC1, **PLAN_SCALES}, "",
                                 None),
    }
    for r, p in msq.items():
        configs[f"w4a8_msq{round(r * 100)}"] = (f"W4A8 MSQ ρ={r}", p, "minmax", {}, AUTO_SHORT, None)
        configs[f"w4a8_msq{round(r * 100)}_bc"] = (f"W4A8 MSQ ρ={r} + BC", p, "minmax", BC2,
                                                   f"{AUTO_SHORT}; {BC2_NOTE}", None)
        configs[f"w4a8_msq{round(r * 100)}_adaround_bc"] = (f"W4A8 MSQ ρ={r}, AdaRound + BC", p, "adaround",
                                                            {"adaround": ada, **BC1, **PLAN_SCALES}, "", None)
    # percentile activation clipping (the act_percentile stage, recipe minmax_pct) beside Brevitas' own
    pct_note = "activation ranges at the 99.99th percentile of the magnitudes (stage act_percentile)"
    configs["w8a8_tensor_pct"] = ("W8A8 per-tensor, percentile activations", w8t, "minmax_pct", {}, pct_note,
                                  rep(b8, act_percentile=99.99))
    configs["w4a8_rtn_pct"] = ("W4A8 fixed per-channel, nearest, percentile activations", w4, "minmax_pct", {},
                               f"{AUTO_NOTE}; {pct_note}", rep(b4, act_percentile=99.99))
    # output-aware per-row weight scales (mixq only: Brevitas has no equivalent)
    out: dict[str, Any] = {"weight_scales": "output"}
    out_note = "output-aware weight scales"
    configs["w8a8_channel_out"] = ("W8A8 per-channel, output-aware scales", w8c, "minmax", out, out_note, None)
    configs["w4a8_rtn_out"] = ("W4A8 fixed per-channel, nearest, output-aware scales", w4, "minmax", out, out_note,
                               None)
    configs["w4a8_rtn_out_bc"] = ("W4A8 fixed per-channel, nearest + BC, output-aware scales", w4, "minmax",
                                  {**out, **BC2}, f"{out_note}; {BC2_NOTE}", None)
    configs["w4a8_adaround_out"] = ("W4A8 fixed per-channel, AdaRound, output-aware scales", w4, "adaround",
                                    {**out, "adaround": ada, "bias_correction": "none"}, out_note, None)
    configs["w4a8_sp2_out_bc"] = ("W4A8 all-SP2 + BC, output-aware scales", sp2, "minmax", {**out, **BC2},
                                  f"{out_note}; {BC2_NOTE}", None)
    configs["w4a8_msq50_out_bc"] = ("W4A8 MSQ ρ=0.5 + BC, output-aware scales", msq[0.5], "minmax", {**out, **BC2},
                                    f"{out_note}; {BC2_NOTE}", None)
    outrows = {**out, "msq_rows": "output"}
    outrows_note = "output-aware weight scales, SP2 rows re-chosen on the output error"
    configs["w4a8_msq50_outrows"] = ("W4A8 MSQ ρ=0.5, output-aware scales and rows", msq[0.5], "minmax", outrows,
                                     outrows_note, None)
    configs["w4a8_msq50_outrows_bc"] = ("W4A8 MSQ ρ=0.5 + BC, output-aware scales and rows", msq[0.5], "minmax",
                                        {**outrows, **BC2}, f"{outrows_note}; {BC2_NOTE}", None)
    configs["w4a8_sp2_out"] = ("W4A8 all-SP2, output-aware scales", sp2, "minmax", out, out_note, None)
    configs["w4a8_msqauto_outrows"] = ("W4A8 MSQ ρ=auto on the output error, output-aware scales", msq[0.5], "minmax",
                                       {**out, "msq_rows": "output_auto"},
                                       "output-aware weight scales; SP2 on exactly the rows whose output error is "
                                       "lower with it", None)
    # output-aware activation ranges (mixq only): each input quantizer's clip tuned on the layer's output error
    acts: dict[str, Any] = {"act_ranges": "output"}
    acts_note = "output-aware activation ranges"
    configs["w8a8_channel_acts"] = ("W8A8 per-channel, output-aware activation ranges", w8c, "minmax", acts,
                                    acts_note, None)
    configs["w8a8_tensor_cle_bc_acts"] = ("W8A8 per-tensor + CLE + bias corr., output-aware activation ranges", w8t,
                                          "dfq_empirical", acts, acts_note, None)
    configs["w8a8_channel_cle_bc"] = ("W8A8 per-channel + CLE + bias corr.", w8c, "dfq_empirical", {}, DFQ_NOTE,
                                      rep(b8, per_channel=True, equalize=True, bias_correction=True))
    configs["w8a8_channel_cle_bc_acts"] = ("W8A8 per-channel + CLE + bias corr., output-aware activation ranges",
                                           w8c, "dfq_empirical", acts, acts_note, None)
    configs["w4a8_rtn_out_bc_acts"] = ("W4A8 fixed per-channel, nearest + BC, output-aware scales and ranges", w4,
                                       "minmax", {**out, **acts, **BC2}, f"{out_note}, {acts_note}; {BC2_NOTE}",
                                       None)
    # accuracy-first MSQ: SP2 exactly on the rows where its error is below fixed point's
    auto = assign_rows(model, plan("fixed4n", "channel", weight_observer="mse", first_last="fixed8n", alt="sp2_4"),
                       "auto")
    configs["w4a8_msqauto"] = ("W4A8 MSQ ρ=auto", auto, "minmax", {}, AUTO_SHORT, None)
    configs["w4a8_msqauto_bc"] = ("W4A8 MSQ ρ=auto + BC", auto, "minmax", BC2, f"{AUTO_SHORT}; {BC2_NOTE}", None)
    # GPTQ (exact output-error Hessian, any row grid); for MSQ it also picks each row's format on that error
    gq = gptq or GPTQConfig()
    gout: dict[str, Any] = {**out, "gptq": gq, "bias_correction": "none"}
    g_note = "output-aware weight scales; GPTQ rounding"
    configs["w4a8_gptq"] = ("W4A8 fixed per-channel, GPTQ", w4, "gptq", gout, g_note,
                            rep(b4, gptq=True))
    configs["w4a8_sp2_gptq"] = ("W4A8 all-SP2, GPTQ", sp2, "gptq", gout, g_note, None)
    configs["w4a8_msq50_gptq"] = ("W4A8 MSQ ρ=0.5, GPTQ, rows on the Hessian error", msq[0.5], "gptq",
                                  {**gout, "msq_rows": "output"},
                                  f"{g_note}; SP2 rows (half of each layer) chosen on the exact output error",
                                  None)
    configs["w4a8_msqauto_gptq"] = ("W4A8 MSQ ρ=auto, GPTQ, rows on the Hessian error", msq[0.5], "gptq",
                                    {**gout, "msq_rows": "output_auto"},
                                    f"{g_note}; each row takes the format with the smaller exact output error",
                                    None)
    configs["w8a8_datafree"] = ("W8A8 per-channel, data-free", w8c, "datafree", {"datafree": datafree},
                                f"no calibration images: {datafree.images} inputs synthesized from BN statistics",
                                None)
    rows: list[Row] = [bench.float_row()]
    for key, (label, qplan, recipe, kw, notes, bcfg) in configs.items():
        if only and key not in only:
            continue
        print(label, flush=True)
        rows.append(run_mixq(bench, label, qplan, recipe, notes, **kw))
        if bcfg is not None and brevitas:
            rows.append(run_brevitas(bench, label, bcfg, first, last))
            rows[-2].extra["vs_brevitas"] = bench.versus(label)
        if on_rows is not None:
            on_rows(rows)
    return rows
