"""The report of `mixq run`: the chosen design and why, the trade-off, every design layer by layer,
the weights' quantization grids, and the checks (integer engine, RTL when the run has them).

`build_run_report` reads the run's summary (what ``summary.json`` holds) and, per design in
``summary["designs"]``, a `DesignView`: a short label, the plan and, when at hand, the quantized model.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.errors import MixqError
from mixq.graph.convert import to_quantized
from mixq.graph.spec import LayerSpec
from mixq.hw import estimate
from mixq.nn import QConv2d, QLinear
from mixq.plan import QuantPlan
from mixq.report.html import Html, Report, esc, img_html, note_html, table_html
from mixq.report.plots import HistPanel, Point, layer_histograms, tradeoff_plot
from mixq.report.tables import LAYER_HEADER, MARK, generic_html, hw_note, layer_rows, verify_rows, weight_label


@dataclass(frozen=True)
class DesignView:
    """A design of the run as the report shows it. ``model`` is its quantized model (the weight scales of
    the histograms); without one the scales come from the plan (`to_quantized`, weights only, no data)."""

    label: str
    plan: QuantPlan
    model: nn.Module | None = None


def hardware_layers(specs: Sequence[LayerSpec], plan: QuantPlan, hw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-layer rows of the estimate behind a design's ``hardware`` summary (same part, template, folding rule)."""
    est = estimate(list(specs), plan, str(hw["part"]), str(hw["arch"]), parts=int(hw.get("parts", 1)))
    return list(est.to_dict()["layers"])


def default_choice(summary: Mapping[str, Any]) -> int:
    """The searched design when the search found one, else the headline (the first design)."""
    if "compare" in summary.get("search", {}):
        for i, d in enumerate(summary["designs"]):
            if d.get("plan") == "search/plan.json":
                return i
    return 0


def build_run_report(summary: Mapping[str, Any], designs: Sequence[DesignView], float_model: nn.Module,
                     specs: Sequence[LayerSpec], chosen: int | None = None) -> Report:
    """The report of a run. ``designs[i]`` describes ``summary["designs"][i]``; ``float_model`` is the
    (BN-folded) float model whose weights the histograms show; ``specs`` its captured layers; ``chosen``
    the design shown first (default: `default_choice`)."""
    ds = summary["designs"]
    if len(designs) != len(ds):
        raise MixqError(f"report: {len(designs)} design views for {len(ds)} designs in the summary")
    idx = default_choice(summary) if chosen is None else chosen
    hw_layers = [d.get("hardware_layers") or hardware_layers(specs, v.plan, d["hardware"])
                 for d, v in zip(ds, designs, strict=True)]
    rep = Report(f"mixq — {summary['model']} on {summary['dataset']}", subtitle=(
        f"{summary['eval_images']:,} test images · target {summary['target_part']} · FP32 top-1 "
        f"{summary['fp32_accuracy']:.2f}% · {summary['macs_per_image']:,} MACs per image"
        + (f" · run took {summary['wall_time_s']:g} s" if "wall_time_s" in summary else "")))
    _chosen(rep, summary, designs, idx)
    _tradeoff(rep, summary, designs, idx)
    _designs(rep, summary, designs, idx)
    rows = {s.name: int(s.out_channels) for s in specs if s.is_compute}
    body = []
    for i, (d, v, layers) in enumerate(zip(ds, designs, hw_layers, strict=True)):
        cells, classes = layer_rows(d["hardware"], layers, v.plan, rows)
        title = f"{v.label}{' (chosen)' if i == idx else ''} — {d['hardware']['fps']:,.0f} frames/s"
        body.append(f'<h3 id="layers-{i}">{html.escape(title)}</h3>'
                    + table_html(LAYER_HEADER, cells, classes, left=(1, 2, 3, 4)) + note_html(hw_note(d["hardware"])))
    rep.add_html("Per-layer mapping of every design", "".join(body), "layers")
    _histograms(rep, designs, float_model, rows)
    _verification(rep, summary, designs)
    if summary.get("rtl") is not None:
        rep.add_html("RTL check: the searched design in Verilog vs the integer engine",
                     generic_html(summary["rtl"]) + note_html(
                         "The searched design generated as one streaming accelerator (AXI4-Stream in and out) at "
                         "the folding the estimator chose, simulated in Verilator on test images with randomized "
                         "backpressure; every output element is compared with the integer engine."), "rtl")
    cfg = summary.get("config", {})
    files = ", ".join([*(str(d["plan"]) for d in ds), "summary.json (every figure of this page)"])
    rep.add_html("Files and settings", note_html(f"files: {files}") + note_html(
        "settings: " + ", ".join(f"{k}={v}" for k, v in cfg.items())), "files")
    return rep


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _chosen(rep: Report, s: Mapping[str, Any], views: Sequence[DesignView], idx: int) -> None:
    ds, fp32 = s["designs"], float(s["fp32_accuracy"])
    d, v, hw = ds[idx], views[idx], ds[idx]["hardware"]
    acc, u = float(d["accuracy"]), hw["utilization"]
    text = (f"{v.label}: {hw['fps']:,.0f} frames/s on {hw['part']} at {acc:.2f}% top-1 "
            f"({acc - fp32:+.2f} points vs FP32)")
    if idx != 0:
        base = ds[0]
        text += (f", {hw['fps'] / max(base['hardware']['fps'], 1e-9):.1f}× the frame rate of {views[0].label} "
                 f"with {base['size_bytes'] / max(d['size_bytes'], 1):.1f}× less weight storage")
    text += (f"; fits (LUT {_pct(u['lut'])}, DSP {_pct(u['dsp'])}, BRAM {_pct(u['bram'])})." if hw["fits"] else
             "; does NOT fit: " + "; ".join(hw.get("overflows", [])) + ".")
    sr = s.get("search")
    why = ""
    over = False
    if sr is not None and "compare" in sr and idx == default_choice(s):
        why = (f"Chosen by the hardware-aware search: the fastest plan ({sr['chosen']}) within "
               f"{sr['max_drop']:g} point of FP32 on {sr['search_images']:,} training images; "
               f"test images judge it here.")
        over = fp32 - acc > float(sr["max_drop"])
        if over:
            why += f" On the test images it loses {fp32 - acc:.2f} points: more than the {sr['max_drop']:g} allowed."
    elif sr is not None and "error" in sr:
        why = f"The hardware-aware search found no plan ({sr['error']}); the headline design is shown."
    elif sr is None:
        why = "The hardware-aware search did not run; the headline design is shown."
    kpis = [(f"{acc:.2f}%", "top-1 (test)"), (f"{acc - fp32:+.2f}", "points vs FP32"),
            (f"{hw['fps']:,.0f}", "frames/s"), (f"{hw['latency_ms']:.3f} ms", "latency"),
            (_pct(u["lut"]), "LUT"), (_pct(u["dsp"]), "DSP"), (_pct(u["bram"]), "BRAM"),
            (f"{d['size_bytes'] / 1024:,.0f} KiB", "weights + scales"),
            (f"{s['size_bytes_fp32'] / max(d['size_bytes'], 1):.1f}×", "smaller than FP32")]
    cls = "verdict" if hw["fits"] and not over else "verdict warn"
    body = (f'<p class="{cls}">{html.escape(text)}</p>' + note_html(why)
            + '<div class="kpis">' + "".join(f"<div class=\"kpi\"><b>{esc(a)}</b><span>{esc(b)}</span></div>"
                                             for a, b in kpis) + "</div>"
            + note_html(f"{d['name']} · plan {d['plan']} · bottleneck {hw['bottleneck']}"))
    rep.add_html(f"Chosen design: {v.label}", body, "chosen")


def _tradeoff(rep: Report, s: Mapping[str, Any], views: Sequence[DesignView], idx: int) -> None:
    sr = s.get("search", {})
    if "compare" not in sr:
        return
    ref = float(sr["reference_search_accuracy"])
    train = [Point("searched" if r["design"] == "searched" else r["design"].removeprefix("uniform "), r["fps"],
                   r["search_accuracy"], "chosen" if r["design"] == "searched" else "uniform") for r in sr["compare"]]
    test = [Point(v.label, d["hardware"]["fps"], d["accuracy"], "chosen" if i == idx else "design")
            for i, (d, v) in enumerate(zip(s["designs"], views, strict=True))]
    test += [Point(r["design"].removeprefix("uniform "), r["fps"], r["test_accuracy"], "uniform")
             for r in sr["compare"] if r["design"] != "searched" and not any(_same(r, p) for p in test)]
    png = tradeoff_plot(f"{s['model']} on {sr['part']}: accuracy vs frame rate",
                        [(p["fps"], p["search_accuracy"]) for p in sr.get("pareto", [])], train, ref,
                        ref - float(sr["max_drop"]), test, float(s["fp32_accuracy"]))
    rows = [[r["design"], r["fps"], "yes" if r["fits"] else "NO", r["lut"], r["dsp"], r["bram"],
             r["search_accuracy"], r["test_accuracy"], r["size_bytes"]] for r in sr["compare"]]
    body = (img_html(png, "accuracy vs frames/s: Pareto front of the search, the chosen plan, uniform "
                          "baselines and every design", "Left: the search's Pareto front on training images "
                                                        "(the dotted line is the allowed drop). Right: the "
                                                        "designs on the test images.")
            + table_html(["search point", "frames/s", "fits", "LUT", "DSP", "BRAM36", "top-1 train (%)",
                          "top-1 test (%)", "size (bytes)"], rows, ["chosen"] + [""] * (len(rows) - 1))
            + note_html(f"search time {sr.get('timings_s', {}).get('total', '?')} s; best reachable "
                        f"{sr['best_reachable_fps']:,.0f} frames/s; front in search/pareto.json"))
    rep.add_html("Trade-off: accuracy vs frame rate", body, "tradeoff")


def _same(row: Mapping[str, Any], p: Point) -> bool:
    """A search baseline that is one of the designs already drawn (e.g. uniform W8A8 and the W8A8 headline)."""
    return abs(row["fps"] - p.fps) <= 0.01 * max(p.fps, 1.0) and abs(row["test_accuracy"] - p.accuracy) < 0.05


def _designs(rep: Report, s: Mapping[str, Any], views: Sequence[DesignView], idx: int) -> None:
    fp32 = float(s["fp32_accuracy"])
    rows: list[list[Any]] = [[Html("<b>FP32</b>"), fp32, "—", s["size_bytes_fp32"], "—", "—", "—", "—", "—",
                              "—", "—"]]
    classes = [""]
    for i, (d, v) in enumerate(zip(s["designs"], views, strict=True)):
        hw, r, u = d["hardware"], d["hardware"]["resources"], d["hardware"]["utilization"]
        mark = f" {MARK} chosen" if i == idx else ""
        rows.append([Html(f"<b>{esc(v.label)}</b>{esc(mark)}<br><span class=\"note\">{esc(d['name'])}</span>"),
                     d["accuracy"], f"{d['accuracy'] - fp32:+.2f}", d["size_bytes"], hw["fps"], hw["latency_ms"],
                     f"{r['lut']:,.0f} ({_pct(u['lut'])})", f"{r['dsp']:,.0f} ({_pct(u['dsp'])})",
                     f"{r['bram']:,.0f} ({_pct(u['bram'])})", "yes" if hw["fits"] else "NO", hw["bottleneck"]])
        classes.append("chosen" if i == idx else "")
    body = table_html(["design", "top-1 (%)", "vs FP32", "size (bytes)", "frames/s", "latency (ms)", "LUT", "DSP",
                       "BRAM36", "fits", "bottleneck"], rows, classes, left=(10,))
    rep.add_html("Designs compared (streaming accelerator)", body + note_html(
        f"top-1 on {s['eval_images']:,} test images; hardware figures from the cost model on {s['target_part']}"),
        "designs")


def _levels(m: QConv2d | QLinear) -> tuple[list[np.ndarray], list[str]]:
    """Each row format's levels at the median scale of the rows in that format."""
    levels, labels = [], []
    scheme = m.row_scheme.reshape(-1)
    for i, fmt in enumerate(m.formats):
        sc = m.w_scales[i].reshape(-1)
        own = sc[scheme == i] if bool((scheme == i).any()) else sc
        levels.append(np.asarray(fmt.levels(), dtype=np.float64) * float(torch.median(own)))
        labels.append(str(fmt))
    return levels, labels


def _histograms(rep: Report, views: Sequence[DesignView], float_model: nn.Module, rows: Mapping[str, int]) -> None:
    floats = dict(float_model.named_modules())
    qlayers = []
    for v in views:
        model = v.model if v.model is not None else to_quantized(float_model, v.plan)
        qlayers.append({n: m for n, m in model.named_modules() if isinstance(m, QConv2d | QLinear)})
    images, captions = [], []
    for name in qlayers[0] if qlayers else []:
        panels, parts = [], []
        for v, ql in zip(views, qlayers, strict=True):
            m = ql.get(name)
            lv, lab = _levels(m) if m is not None and m.formats else ([], [])
            panels.append(HistPanel(f"{v.label}: {weight_label(v.plan.get(name), rows.get(name))}", lv, lab))
        w = floats[name].weight.detach().cpu().numpy()  # type: ignore[union-attr]
        png, drawn = layer_histograms(name, w, panels)
        for p, v, n in zip(panels, views, drawn, strict=True):
            parts.append(f"{v.label}: " + (", ".join(f"{lab} {k} levels" for lab, k in zip(p.labels, n, strict=True))
                                           or "float"))
        images.append((f"{name} weight histogram", png))
        captions.append(f"{name} — levels drawn in the weights' range: " + "; ".join(parts))
    rep.add_images("Weights and their quantization grids", images, captions=captions, note=(
        "Float weights (BN folded) of each layer, one panel per design, with each row format's levels at the "
        "median scale of its rows: coarse grids as lines across the bars, dense grids (7 bits and wider) as a "
        "ruler under the bars (a long tick every 16 levels)."), id="weights")


def _verification(rep: Report, s: Mapping[str, Any], views: Sequence[DesignView]) -> None:
    checks = []
    for key in sorted(k for k in s if k == "verify" or k.startswith("verify_")):
        label = {"verify": views[0].label if views else "headline",
                 "verify_msq": views[1].label if len(views) > 1 else "MSQ"}.get(key, key.removeprefix("verify_"))
        checks.append((label, s[key]))
    if not checks:
        return
    header, rows = verify_rows(checks)
    n = checks[0][1].get("images", "?")
    rep.add_html("Verification: integer engine vs fake quantization", table_html(header, rows) + note_html(
        f"{n} test images run through the bit-exact integer engine and the hardware-faithful fake-quantized "
        "model; they must agree on every output element."), "verify")
