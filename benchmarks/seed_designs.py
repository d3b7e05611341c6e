"""The published designs mixq started from, reproduced and beaten on paper (issue 22).

For each published FPGA design (Tomato FPT 2019, Mix and Match HPCA 2021, FILM-QNN FPGA 2022,
Latotzke et al. FPL 2022, Tomato's multi-FPGA mode) three columns side by side:

* (a) the published figures, with their source and what of them could be confirmed;
* (b) `mixq.hw.estimate` of the published configuration (part, clock, precisions, template);
* (c) the fastest design mixq finds on the same part and clock at an equal or better precision
  floor: the search's ILP (`search.fastest`, streaming, every weight on chip) where the weights fit,
  and the overlay at the floor precision with SP2 rows at the best share ρ; the faster one.

The networks are the zoo's (MobileNet-V1, ResNet-18/50/152, MobileNetV2) with random
initialisation — hardware figures do not depend on weight values; the ILP's sensitivity
is the fast weight-only proxy ‖Q(W) − W‖² / ‖W‖² (no accuracy is claimed in this part).

Then Tomato's greedy per-layer arithmetic selection (`search.greedy_plan`) against the ILP search
(`search.search_plan`) on CNV (real weights, Fashion-MNIST top-1) and MobileNetV2 (real weights,
top-1 agreement with FP32 on held-out photos), accuracy against frames/s.

    .venv/bin/python benchmarks/seed_designs.py            # ~10 min on one core (560 s measured)
    .venv/bin/python benchmarks/seed_designs.py --no-greedy  # the design table only (~2 min)
    .venv/bin/python benchmarks/seed_designs.py --md-only    # rewrite the .md from the .json
    .venv/bin/python benchmarks/seed_designs.py --greedy-only  # the greedy-vs-ILP part only, the rows kept

Writes benchmarks/results/seed_designs.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixq import progress, zoo
from mixq.algorithms.msq import row_advantage
from mixq.algorithms.search import (
    GreedyConfig,
    HwTable,
    SearchConfig,
    SearchSpace,
    SensitivityConfig,
    fastest,
    greedy_plan,
    search_plan,
    to_plan,
)
from mixq.algorithms.search.sensitivity import Sensitivity, compute_weights, quantized_weight, wkey
from mixq.algorithms.search.space import weight_formats
from mixq.errors import HardwareError
from mixq.formats import FixedPoint, NumberFormat, PowerOfTwo, SumOfPowers
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.graph.spec import LayerSpec
from mixq.hw import ArchOptions, Estimate, estimate, get_part
from mixq.hw.cost import RESOURCE_NAMES
from mixq.hw.parts import Part
from mixq.io import atomic_write_json, atomic_write_text
from mixq.plan import LayerPlan, QuantPlan, uniform_plan
from mixq.tasks.search import bundled_task

OUT = Path(__file__).parent / "results"
CACHE = Path(__file__).resolve().parents[1] / "runs" / "seed_designs_cache"
OVERLAY_RHOS = (0.0, 0.5, 0.8, 1.0)
SP2_EQUAL_BITS = 4  # SP2 rows count as equal precision up to 4 bits (15 levels, as narrow fixed-4), not above

# ---- the published designs, as data --------------------------------------------------------------------------

FX = {b: FixedPoint(b, signed=True, narrow=True) for b in (4, 8)}


@dataclass(frozen=True)
class Recipe:
    """A published precision configuration: weights (+ a second row format at share ``rho``), activations,
    and which layers stay at W8A8 (``wide``: a rule of `WIDE`)."""

    weight: NumberFormat
    abits: int
    alt: NumberFormat | None = None
    rho: float = 0.0
    wide: str = ""


WIDE: dict[str, Any] = {  # rule -> the layers kept at fixed 8-bit weights / 8-bit activations
    "": lambda cs: set(),
    "first_depthwise": lambda cs: {cs[0].name} | {s.name for s in cs if s.kind == "dwconv"},
    "first_last": lambda cs: {cs[0].name, cs[-1].name},
}
RECIPES: dict[str, Recipe] = {
    "tomato": Recipe(PowerOfTwo(4), 8, wide="first_depthwise"),
    "msq_w4a4": Recipe(FX[4], 4, SumOfPowers(4, 2), 0.5),
    "dsp_w4a4": Recipe(FX[4], 4),
    "film": Recipe(FX[4], 5, FX[8], 0.05),
    "w4a4_first_last_8": Recipe(FX[4], 4, wide="first_last"),
    "w8a8": Recipe(FX[8], 8),
}


def plan_for(row_or_recipe: Row | str, specs: list[LayerSpec], recipe: str | None = None) -> QuantPlan:
    r = RECIPES[recipe or (row_or_recipe if isinstance(row_or_recipe, str) else row_or_recipe.recipe)]
    cs = [s for s in specs if s.is_compute]
    wide = WIDE[r.wide](cs)
    a8 = FixedPoint(8, signed=False)
    over = {n: LayerPlan(weight=FX[8], act=FixedPoint(8, signed=n == cs[0].name)) for n in wide}
    name = row_or_recipe if isinstance(row_or_recipe, str) else row_or_recipe.network
    return uniform_plan(name, [s.name for s in cs], r.weight, FixedPoint(r.abits, signed=False) if r.abits != 8
                        else a8, signed_inputs={cs[0].name}, overrides=over, weight_alt=r.alt, alt_ratio=r.rho)


TOMATO = ("Zhao et al., *Automatic Generation of Multi-precision Multi-arithmetic CNN Accelerators for FPGAs*, "
          "FPT 2019 (arXiv:1910.10075), MobileNet-V1 results table.")
TOMATO_OK = ("the abstract's claims (MobileNet-V1, shift + fixed-point weights, a whole ImageNet network on one FPGA "
             "without off-chip memory, 'more than 3000 frames per second'); the per-device FPS / latency / GOP/s are "
             "the issue's figures — our search did not reach the paper's table, so the table number is not confirmed. "
             "Tomato's per-layer shift/fixed assignment is not published in what we could read: (b) uses PoT-4 "
             "(a single shift) on the pointwise convs and the classifier, fixed 8-bit on the first conv and the "
             "depthwise convs, FXP8 activations.")
MM = ("Chang et al., *Mix and Match: A Novel FPGA-Centric Deep Neural Network Quantization Framework*, HPCA 2021 "
      "(arXiv:2012.04240).")
MM_OK = ("the method (row-wise SP2 on LUTs + fixed point on DSPs, W4A4); the 2.1-4.1x range is the issue's figure and "
         "the per-device SP2 share and clock were not confirmed: (b) uses rho = 0.5 and the catalog clock, (c) scans "
         "rho.")
FILM = ("Sun et al., *FILM-QNN: Efficient FPGA Acceleration of Deep Neural Networks with Intra-Layer, Mixed-Precision "
        "Quantization*, FPGA 2022 (doi:10.1145/3490422.3502364), abstract.")
FILM_OK = ("FPS and the precision mix (filter-wise 95% 4-bit / 5% 8-bit weights, 5-bit activations, ZCU102) are in "
           "the abstract; the table number and the clock are not confirmed: mixq uses the catalog 250 MHz.")
LAT = ("Latotzke, Ciesielski, Gemmeke, *Design of High-Throughput Mixed-Precision CNN Accelerators on FPGA*, FPL 2022 "
       "(arXiv:2208.04854), abstract.")
LAT_OK = ("245 FPS (ResNet-18, 87.48% top-5) and 1.13 TOp/s (ResNet-152, 92.9% top-5) are in the abstract; the part, "
          "clock and per-layer precisions are not, and were not confirmed: mixq uses the XCZU9EG at its catalog clock "
          "and W4A4 with 8-bit first/last layers as a stand-in (so (b) and (c) are not like-for-like).")
MULTI_OK = "not confirmed: we found no published multi-FPGA figure of Tomato's to compare with."


@dataclass(frozen=True)
class Row:
    key: str
    design: str
    network: str
    part: str
    clock_mhz: float | None  # None: the part catalog's clock
    template: str
    recipe: str
    config: str
    published: dict[str, Any]
    source: str
    confirmed: str
    floor: tuple[int, int]  # (c): the least weight / activation bits allowed
    pub_fps: float | None = None
    gap_note: str = ""
    baseline: str | None = None
    parts: int = 1
    link_gbps: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


def _mm(net: str, part: str, lo_hi: str) -> Row:
    return Row(f"mm-{net}-{part}", "Mix and Match (HPCA 2021)", net, part, None, "overlay", "msq_w4a4",
               "W4A4, SP2 rows rho=0.5 + fixed", {"speedup over all-DSP": lo_hi}, MM, MM_OK, (4, 4),
               baseline="dsp_w4a4",
               gap_note="The published figure is a ratio; (b) and (c) give the same ratio against mixq's all-DSP "
                        "W4A4 overlay on the same part (the 'x over all-DSP' in the table). (b) at rho = 0.5 falls "
                        "below the published range: an even split leaves most LUTs idle (the LUT core carries ~2.5x "
                        "the DSP core's MACs on these parts, benchmarks/results/hw_msq_ratio.md); at mixq's best rho, "
                        "(c) lands in or above it.")


ROWS: tuple[Row, ...] = (
    Row("tomato-vu9p", "Tomato (FPT 2019)", "mobilenet_v1", "xcvu9p", 125.0, "streaming", "tomato",
        "per-layer PoT-4 shift / fixed-8 weights, FXP8 acts", {"fps": 2491, "latency_ms": 0.40, "gop/s": 2833},
        TOMATO, TOMATO_OK, (4, 8), pub_fps=2491,
        gap_note="Tomato's FPS and GOP/s are both 125 MHz / 50,176 cycles: one 224x224 input pixel per clock into the "
                 "first layer. mixq's RTL takes one input pixel a beat too, and since session 26 the estimator bounds "
                 "a frame by that (50,176 beats). Its first layer (3 channels, 3x3, stride 2) reads its window's 3 "
                 "rows in parallel (3 read ports on its buffer, a copy of the memory each; sessions 21-25 it read one "
                 "pixel a cycle, 6 per output pixel: 75,600 cycles, 1,653 FPS), and a streamed window takes fold + 1 "
                 "cycles a pixel (was fold + 3), so no layer binds before the input stream. Latency differs by "
                 "design: Tomato's 0.40 ms is the pipelined frame interval, mixq's the store-and-forward sum of every "
                 "layer's frame time (an upper bound). Every weight is on chip (ddr_weights 0)."),
    Row("tomato-s10", "Tomato (FPT 2019)", "mobilenet_v1", "1sg280", 156.0, "streaming", "tomato",
        "per-layer PoT-4 shift / fixed-8 weights, FXP8 acts", {"fps": 3109, "latency_ms": 0.32, "gop/s": 3536},
        TOMATO, TOMATO_OK, (4, 8), pub_fps=3109,
        gap_note="The published FPS is exactly 156 MHz / 50,176: one input pixel per clock, mixq's input stream's "
                 "bound too (as on the XCVU9P); the overlay with SP2 rows (c) passes the published rate."),
    _mm("resnet18", "xc7z020", "2.1-4.1x (range over networks and parts)"),
    _mm("resnet18", "xc7z045", "2.1-4.1x (range over networks and parts)"),
    _mm("mobilenet_v2", "xc7z020", "2.1-4.1x (range over networks and parts)"),
    _mm("mobilenet_v2", "xc7z045", "2.1-4.1x (range over networks and parts)"),
    *(Row(f"film-{net}", "FILM-QNN (FPGA 2022)", net, "xczu9eg", None, "overlay", "film",
          "filter-wise 95% W4 / 5% W8, A5", {"fps": fps}, FILM, FILM_OK, (4, 5), pub_fps=fps,
          gap_note="Where (b) is over 25% above (a): mixq's overlay runs at the catalog 250 MHz (FILM-QNN's HLS "
                   "clock is not confirmed; FPS scales with it with compute-bound layers), packs two 4-bit rows per "
                   "DSP and takes each layer at max(compute, DDR traffic / bandwidth), i.e. transfers fully "
                   "overlapped; FILM-QNN's tiling and buffering are not in the abstract.")
      for net, fps in (("resnet18", 214.8), ("resnet50", 109.1), ("mobilenet_v2", 537.9))),
    Row("latotzke-resnet18", "Latotzke et al. (FPL 2022)", "resnet18", "xczu9eg", None, "overlay",
        "w4a4_first_last_8", "layer/channel-wise mixed (stand-in: W4A4, first/last W8A8)",
        {"fps": 245, "top-5": 87.48}, LAT, LAT_OK, (4, 4), pub_fps=245,
        gap_note="The part, clock and precisions are unconfirmed (see the source line): the gap is not a like-for-like "
                 "comparison."),
    Row("latotzke-resnet152", "Latotzke et al. (FPL 2022)", "resnet152", "xczu9eg", None, "overlay",
        "w4a4_first_last_8", "layer/channel-wise mixed (stand-in: W4A4, first/last W8A8)",
        {"TOp/s": 1.13, "fps (derived: 1.13e12 / 23.03 GOp)": 49.1, "top-5": 92.9}, LAT, LAT_OK, (4, 4), pub_fps=49.1,
        gap_note="As for ResNet-18: part, clock and precisions unconfirmed."),
    *(Row(f"multi-mobilenet_v1-{n}x{link:g}", "Tomato multi-FPGA", "mobilenet_v1", "xc7z045", 125.0, "streaming",
          "w8a8", f"W8A8, {n} x XC7Z045, links {link:g} Gb/s", {"fps": "not confirmed"}, TOMATO, MULTI_OK, (8, 8),
          parts=n, link_gbps=link,
          gap_note="MobileNet-V1's 4.2 M weights at 8 bits (34 Mb) exceed one XC7Z045's 19.6 Mb of block RAM.")
      for n, link in ((1, 10.0), (2, 10.0), (3, 10.0), (4, 10.0), (3, 0.1))),
    Row("multi-resnet50-4x10", "Tomato multi-FPGA", "resnet50", "xc7z045", 125.0, "streaming", "w8a8",
        "W8A8, 4 x XC7Z045, links 10 Gb/s", {"fps": "not confirmed"}, TOMATO, MULTI_OK, (8, 8), parts=4,
        gap_note="ResNet-50's 25.6 M weights at 8 bits (204 Mb) need at least 11 XC7Z045s' block RAM: 4 do not fit."),
)


def mse_sensitivity(model: torch.nn.Module, space: SearchSpace) -> Sensitivity:
    """The fast proxy for random-init networks: relative weight error ‖Q(W) − W‖² / ‖W‖² per option (the
    search's own `quantized_weight`, SP2 rows by MSQ's rule); activations cost nothing at the floor."""
    ws: dict[str, dict[str, float]] = {}
    for n, m in compute_weights(model).items():
        w = m.weight.detach()
        adv = row_advantage(w, *weight_formats(4))
        norm = float(w.pow(2).sum()) or 1.0
        ws[n] = {wkey(b, r): float((quantized_weight(w, b, r, adv) - w).pow(2).sum()) / norm
                 for b, r in space.weight_keys()}
    return Sensitivity(ws, {n: {f"a{a}": 0.0 for a in space.abits} for n in ws}, "weight-mse")


def md_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's 'done when' checks, read off the results."""
    by = {r["key"]: r for r in rows}
    t = by["tomato-vu9p"]["mixq_published_config"]
    out = ["## Checks", "",
           f"- Tomato on the XCVU9P at 125 MHz: fits {t['fits']}, weights from DDR: {t['ddr_weights']} layers, "
           f"block RAM {t['utilization']['bram']:.1%}, UltraRAM {t['utilization']['uram']:.1%}, "
           f"LUT {t['utilization']['lut']:.1%}, DSP {t['utilization']['dsp']:.1%} — all weights on chip."]
    for r in rows:
        if "mixq_at_published_fps" in r:
            a = r["mixq_at_published_fps"]
            out.append(f"- {r['key']}: folded for the published {r['published_fps']} FPS, " + (
                f"not reachable: {a['why']}." if a.get("reachable") is False else
                f"mixq's design reaches {a['fps']} FPS, fits {a['fits']}, LUT {a['utilization']['lut']:.1%}, "
                f"DSP {a['utilization']['dsp']:.1%}, BRAM {a['utilization']['bram']:.1%}."))
        if r["mixq_published_config"]["parts"] > 1:
            b = r["mixq_published_config"]
            out.append(f"- {r['key']}: fits {b['fits']} on {b['parts']} parts (layers per part {b['partition']}), "
                       f"{b['fps']} FPS; link bits per frame {b['link_bits_per_frame']}, so the "
                       f"{r['key'].rsplit('x', 1)[-1]} Gb/s links allow {r.get('link_bound_fps', '—')} FPS.")
        pub, c = r["published_fps"], r["mixq_best"]
        if pub:
            verdict = "reaches" if c.get("fps", 0) >= pub else "does not reach"
            out.append(f"- {r['key']}: (c) {c.get('fps')} FPS {verdict} the published {pub} FPS"
                       + ("" if c.get("fps", 0) >= pub else f"; bound: {c.get('bottleneck')}") + ".")
        elif "speedup" in c:
            out.append(f"- {r['key']}: (c) {c['speedup']}x over all-DSP vs the published 2.1-4.1x "
                       f"(bound: {c.get('bottleneck')}).")
    return out


def _brief(e: Estimate) -> dict[str, Any]:
    return {"fps": round(e.fps, 1), "latency_ms": round(e.latency_ms, 3), "gops": round(e.gops, 1),
            "fits": e.fits, "arch": e.arch, "parts": e.n_parts, "clock_mhz": e.clock_mhz,
            "bottleneck": e.bottleneck, "utilization": {k: round(v, 3) for k, v in e.utilization.items()},
            "ddr_weights": len(e.ddr_weights), "partition": [len(p) for p in e.partition],
            "link_bits_per_frame": list(e.link_bits)}


def _weights_fit(specs: list[LayerSpec], wbits: int, part: Part) -> bool:
    bits = sum(s.params for s in specs if s.is_compute) * wbits
    return bits <= 0.95 * (part.bram_bits + part.uram * 288 * 1024)


def best_design(row: Row, model: torch.nn.Module, specs: list[LayerSpec], part: Part) -> dict[str, Any]:
    """(c): the faster of the ILP's streaming design (weights on chip) and the overlay at the floor with SP2 rows."""
    wmin, amin = row.floor
    names = [s.name for s in specs if s.is_compute]
    cands: list[dict[str, Any]] = []
    rhos = OVERLAY_RHOS if wmin <= SP2_EQUAL_BITS else (0.0,)
    widths = SearchSpace().residual_widths(specs)  # the stream widths mixq search sweeps (exact, 12, 8 bits)
    if _weights_fit(specs, wmin, part):
        space = SearchSpace(wbits=tuple(b for b in (4, 5, 6, 8) if b >= wmin),
                            abits=tuple(a for a in (4, 5, 6, 8) if a >= amin),
                            rhos=(0.0, 0.5, 1.0) if wmin <= SP2_EQUAL_BITS else (0.0,))
        sens = mse_sensitivity(model, space)
        adv = {n: row_advantage(m.weight.detach(), *weight_formats(4)) for n, m in compute_weights(model).items()}
        for rb in widths:  # as mixq search: one ILP per residual-stream width
            t0 = time.perf_counter()
            table = HwTable(specs, space.options(), part, [names[0]]).with_residual_bits(rb)
            a = fastest(table, sens)
            for attempt in range(4):  # the ILP's per-layer table can miss the whole estimate by a hair: shrink that
                if a is None:
                    break
                e = estimate(specs, to_plan(row.network, a, {names[0]}, adv), part, "streaming", fold="plan")
                if e.fits or attempt == 3:
                    break
                for o in e.overflows:
                    i = RESOURCE_NAMES.index(o.resource)
                    table.budget[i] -= (o.used - o.available) + 0.005 * table.budget[i]
                a = fastest(table, sens)
            streams = "" if rb is None else f", streams {rb}-bit"
            if a is None:
                cands.append({"how": f"ILP, streaming{streams}", "fps": 0.0, "fits": False,
                              "note": "no allocation fits, even at the slowest folding"})
                continue
            mix = Counter(o.label for o in a.options.values()).most_common(4)
            cands.append({"how": f"ILP (search.fastest), streaming{streams}", "options": dict(mix),
                          "search_s": round(time.perf_counter() - t0, 1), **_brief(e)})
    else:
        cands.append({"how": "ILP, streaming", "fps": 0.0, "fits": False,
                      "note": f"weights at W{wmin} exceed the part's block RAM: no streaming design"})
    fixed, sp2 = FixedPoint(wmin, signed=True, narrow=True), SumOfPowers(max(wmin, 3), 2)
    act = FixedPoint(amin, signed=False)
    for rho in rhos:
        for rb in widths:
            plan = uniform_plan(row.network, names, fixed, act, signed_inputs={names[0]},
                                weight_alt=sp2 if rho > 0 else None, alt_ratio=rho)
            e = estimate(specs, dataclasses.replace(plan, residual_bits=rb), part, "overlay")
            streams = "" if rb is None else f", streams {rb}-bit"
            cands.append({"how": f"overlay W{wmin}A{amin}, SP2 rows rho={rho}{streams}", **_brief(e)})
    ok = [c for c in cands if c["fits"]]
    best = max(ok, key=lambda c: c["fps"]) if ok else cands[0]
    return {**best, "candidates": [{k: c[k] for k in ("how", "fps", "fits")} for c in cands]}


def seed_row(row: Row) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = fold_bn(zoo.load(row.network).eval()).eval()
    specs = capture(model, zoo.input_shape(row.network))
    part = get_part(row.part)
    part = part.with_(clock_mhz=row.clock_mhz) if row.clock_mhz else part
    plan = plan_for(row, specs)
    opts = ArchOptions(link_gbps=row.link_gbps)
    b = estimate(specs, plan, part, row.template, parts=row.parts, options=opts) if row.template == "streaming" \
        else estimate(specs, plan, part, row.template)
    out: dict[str, Any] = {"key": row.key, "design": row.design, "network": row.network, "part": part.name,
                           "clock_mhz": part.clock_mhz, "template": row.template, "config": row.config,
                           "published": row.published, "source": row.source, "confirmed": row.confirmed,
                           "mixq_published_config": _brief(b), "gap_note": row.gap_note}
    if row.baseline is not None:  # a published ratio: the same template at the all-DSP baseline
        base = estimate(specs, plan_for(row, specs, row.baseline), part, row.template)
        out["baseline"] = {"config": row.baseline, **_brief(base)}
        out["mixq_published_config"]["speedup"] = round(b.fps / base.fps, 2)
    if row.parts == 1:
        c = best_design(row, model, specs, part)
        if row.baseline is not None:
            c["speedup"] = round(c["fps"] / out["baseline"]["fps"], 2)
        out["mixq_best"] = c
    else:
        out["mixq_best"] = {"how": "same as (b): the search is single-part; no higher precision than W8A8",
                            **_brief(b)}
    ref = out["mixq_published_config"]["fps"]
    out["published_fps"] = row.pub_fps
    out["gap_b_vs_a"] = round(ref / row.pub_fps - 1, 3) if row.pub_fps else None
    if row.template == "streaming" and row.parts == 1 and row.pub_fps:  # the cheapest folding at the published FPS
        try:
            out["mixq_at_published_fps"] = _brief(estimate(specs, plan, part, "streaming", target_fps=row.pub_fps))
        except HardwareError as e:  # mixq's template cannot reach the published rate on this part
            out["mixq_at_published_fps"] = {"reachable": False, "why": str(e)}
    if row.parts > 1 and b.link_bits:
        out["link_bound_fps"] = round(row.link_gbps * 1e9 / max(b.link_bits), 1)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(row.key, out["mixq_published_config"]["fps"], out["mixq_best"].get("fps"), out["seconds"], flush=True)
    return out


def _point(label: str, fps: float, acc: float, ref: float, extra: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "fps": round(fps, 1), "accuracy": round(acc, 2), "drop": round(ref - acc, 2), **extra}


def greedy_vs_ilp(name: str, part: str, calib_n: int, eval_n: int, sens: SensitivityConfig, points: int,
                  space: SearchSpace, judges: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    model, calib, ev = bundled_task(name, True, calib_n, eval_n)
    t0 = time.perf_counter()
    cfg = SearchConfig(space=space, sensitivity=sens, points=points, executor="serial", workers=1,
                       cache_dir=str(CACHE))
    res = search_plan(name, model, calib, ev, part, max_drop=100.0, cfg=cfg)
    ilp_s = time.perf_counter() - t0
    ilp = [_point(p.label, p.fps, p.accuracy, res.reference_accuracy, {"kind": p.kind})
           for p in sorted(res.points, key=lambda p: p.fps) if p.fits]
    greedy = []
    for judge, th in judges:
        g = greedy_plan(name, model, calib, ev, part, GreedyConfig(judge=judge, threshold=th, sensitivity=sens),
                        sens=res.sensitivity if judge == "proxy" else None)
        d = g.to_dict()
        greedy.append(_point(f"greedy {judge} <= {th:g}", g.fps, g.accuracy, g.reference,
                             {"fits": g.fits, "trials": g.trials, "seconds": d["seconds"],
                              "arithmetic_counts": d["arithmetic_counts"]}))
        print(name, greedy[-1], flush=True)
    return {"model": name, "part": part, "reference": round(res.reference_accuracy, 2),
            "metric": "top-1 accuracy (%)" if name == "cnv" else "top-1 agreement with FP32 (%)",
            "calib_images": calib_n, "eval_images": eval_n, "ilp_search_s": round(ilp_s, 1),
            "ilp_points": ilp, "greedy": greedy}


def _verdicts(c: dict[str, Any]) -> list[str]:
    """Per greedy point: the fastest ILP-searched plan at least as good on the same figure."""
    ilp = [p for p in c["ilp_points"] if p["kind"] == "searched"]
    out = []
    for g in c["greedy"]:
        rival = max((p for p in ilp if p["accuracy"] >= g["accuracy"]), key=lambda p: p["fps"], default=None)
        if rival is None:
            out.append(f"- {g['label']}: no ILP-searched plan is as accurate ({g['accuracy']}).")
            continue
        if rival["fps"] >= g["fps"]:
            verdict = f"the ILP dominates it ({rival['fps'] / g['fps']:.2f}x the frames/s)"
        else:
            verdict = "the greedy point is on the joint Pareto front (no ILP plan is both as fast and as accurate)"
        out.append(f"- {g['label']} ({g['fps']} FPS, {g['accuracy']}): the fastest ILP plan at least as accurate "
                   f"is {rival['label']} ({rival['fps']} FPS, {rival['accuracy']}) — {verdict}.")
    return out


def _fmt_pub(p: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in p.items())


def _md(rows: list[dict[str, Any]], cmp: list[dict[str, Any]], total_s: float) -> str:
    L = ["# Seed designs: published vs mixq's estimate vs mixq's best (issue 22)", "",
         "(a) published; (b) `mixq.hw.estimate` of the published configuration; (c) the fastest design mixq "
         "finds on the same part and clock at an equal or better precision floor. Random-init zoo networks "
         f"(hardware figures do not depend on weights). Whole run {total_s:.0f} s on one core. "
         "Regenerate: `.venv/bin/python benchmarks/seed_designs.py`.", "",
         "| design | network | part @ MHz | config | (a) published | (b) mixq, published config | (b)/(a) | "
         "(c) mixq best | (c) how |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, c = r["mixq_published_config"], r["mixq_best"]
        bs = f"{b['fps']} FPS, {b['latency_ms']} ms, {b['gops']} GOP/s" + ("" if b["fits"] else " (does not fit)")
        if "speedup" in b:
            bs += f"; {b['speedup']}x over all-DSP"
        if b["parts"] > 1:
            bs += (f"; {b['parts']} parts, layers per part {b['partition']}, link bits/frame "
                   f"{b['link_bits_per_frame']}, link-bound {r.get('link_bound_fps', '—')} FPS; "
                   f"bound: {b['bottleneck']}")
        cs = f"{c.get('fps')} FPS" + (f", {c['speedup']}x over all-DSP" if "speedup" in c else "")
        gap = f"{r['gap_b_vs_a']:+.0%}" if r["gap_b_vs_a"] is not None else "—"
        L.append(f"| {r['design']} | {r['network']} | {r['part']} @ {r['clock_mhz']:g} | {r['config']} | "
                 f"{_fmt_pub(r['published'])} | {bs} | {gap} | {cs} | {c.get('how')} |")
    L += ["", "## Sources (what of each published figure could be confirmed)", ""]
    for design in dict.fromkeys(r["design"] for r in rows):
        r = next(x for x in rows if x["design"] == design)
        L.append(f"- **{design}** — {r['source']} Confirmed: {r['confirmed']}")
    L += ["", "## The gap between (a) and (b), row by row", ""]
    L += [f"- **{r['key']}** ((b)/(a) {r['gap_b_vs_a']:+.0%}): {r['gap_note']}" if r["gap_b_vs_a"] is not None
          else f"- **{r['key']}**: {r['gap_note']}" for r in rows]
    L += ["", *md_notes(rows), "", "## Tomato's greedy arithmetic selection vs the ILP search", "",
          "Same model, data, PTQ and metric for both; FPS from `mixq.hw.estimate` (streaming) with each plan's "
          "folding. The greedy keeps activations at 8 bits (Tomato: FXP8) and walks the ladder pot4, pot5, "
          "sp2-4, sp2-6, fixed4, fixed6, fixed8 per layer; the ILP chooses weight and activation bits and SP2 "
          "row shares per layer at a sweep of frame rates.", ""]
    for c in cmp:
        L += [f"### {c['model']} on {c['part']} — {c['metric']}, FP32 {c['reference']}", "",
              f"{c['eval_images']} eval / {c['calib_images']} calibration images; ILP search {c['ilp_search_s']} s.",
              "", "| design | FPS | figure | drop | detail |", "|---|---:|---:|---:|---|"]
        for p in c["ilp_points"]:
            L.append(f"| ILP {p['label']} | {p['fps']} | {p['accuracy']} | {p['drop']} | {p['kind']} |")
        for p in c["greedy"]:
            L.append(f"| {p['label']} | {p['fps']} | {p['accuracy']} | {p['drop']} | {p['trials']} trials, "
                     f"{p['seconds']} s, {p['arithmetic_counts']} |")
        L += [""] + _verdicts(c) + [""]
    if cmp:
        L += ["Why the ILP wins where it does: the greedy takes the cheapest arithmetic layer by layer, but a "
              "streaming pipeline's frame rate is set by its slowest layer, so cheap arithmetic on the other layers "
              "costs accuracy and buys no frames; and Tomato's greedy keeps 8-bit activations, where the ILP also "
              "narrows activations (4-6 bits) on the layers that bound the rate. The greedy is cheap — the proxy "
              "judge needs one Hutchinson pass and no quantized model per trial — and on MobileNetV2 it fills a gap "
              "in the ILP's sweep (a point between its frame-rate targets).", ""]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-greedy", action="store_true")
    ap.add_argument("--md-only", action="store_true", help="rewrite the .md from the .json, run nothing")
    ap.add_argument("--rows-only", action="store_true", help="rerun the design rows, keep the greedy comparison")
    ap.add_argument("--greedy-only", action="store_true", help="rerun the greedy comparison, keep the design rows")
    a = ap.parse_args()
    if a.md_only:
        doc = json.loads((OUT / "seed_designs.json").read_text())
        atomic_write_text(OUT / "seed_designs.md", _md(doc["rows"], doc["greedy_vs_ilp"], doc["seconds"]))
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    progress.configure("quiet")
    t0 = time.perf_counter()
    old = json.loads((OUT / "seed_designs.json").read_text()) if a.rows_only or a.greedy_only else {}
    rows = old["rows"] if a.greedy_only else [seed_row(r) for r in ROWS]
    t_rows = float(old.get("seconds_rows", 0.0)) if a.greedy_only else time.perf_counter() - t0
    cmp: list[dict[str, Any]] = []
    t_greedy = 0.0
    if a.rows_only:
        cmp, t_greedy = old["greedy_vs_ilp"], float(old.get("seconds_greedy", 0.0))
    elif not a.no_greedy:
        t1 = time.perf_counter()
        cmp.append(greedy_vs_ilp("cnv", "xc7z020", 256, 1000, SensitivityConfig(), 3, SearchSpace(),
                                 (("accuracy", 0.5), ("accuracy", 1.0), ("accuracy", 3.0), ("proxy", 0.01),
                                  ("proxy", 0.05))))
        cmp.append(greedy_vs_ilp("mobilenet_v2", "xczu9eg", 32, 64, SensitivityConfig(images=8, hutchinson_samples=2),
                                 2, SearchSpace(wbits=(3, 4, 5, 6, 8), abits=(4, 6, 8)),
                                 (("proxy", 0.5), ("proxy", 2.0), ("proxy", 8.0))))
        t_greedy = time.perf_counter() - t1
    total = t_rows + t_greedy
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"rows": rows, "greedy_vs_ilp": cmp, "seconds": round(total, 1), "seconds_rows": round(t_rows, 1),
           "seconds_greedy": round(t_greedy, 1), "load_average_1min": round(os.getloadavg()[0], 2)}
    atomic_write_json(OUT / "seed_designs.json", doc)
    atomic_write_text(OUT / "seed_designs.md", _md(rows, cmp, total))
    print(f"done in {total:.0f} s", flush=True)


if __name__ == "__main__":
    main()
