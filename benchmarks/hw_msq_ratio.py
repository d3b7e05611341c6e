"""MSQ (SP2 rows on a LUT core beside fixed-point rows on DSPs) vs all-DSP vs all-SP2, at 4 bits.

For ResNet-18 and MobileNetV2 on XC7Z020 and XC7Z045, in the layer-sequential overlay
and the streaming dataflow templates, this estimates the throughput of

* all fixed point on DSPs (W4A4, two rows per DSP48E1),
* all SP2 on LUTs (W4A4, shift-add lanes),
* MSQ at the best row share ρ (scanned 0.05..0.95),

and each design's fraction of the device's physical peak MAC/s (every DSP packed plus
every LUT spent on the cheapest 4-bit LUT lane, at the same clock). Streaming designs
keep every weight on chip where it fits; the weights of the layers that do not fit
stream from DDR (re-read per output pixel), fewest-pixel layers first.

Writes benchmarks/results/hw_msq_ratio.json and .md; where benchmarks/results/hw_msq_ratio.before.json
holds an earlier run (the model before SP2 lanes carried their sign in the adder tree and one-lane DSP
units accumulated in the DSP), the table shows its ratios beside the new ones.
Run: ``.venv/bin/python benchmarks/hw_msq_ratio.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mixq import zoo
from mixq.errors import HardwareError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph.capture import capture
from mixq.hw import ArchOptions, Estimate, estimate
from mixq.io import atomic_write_json, atomic_write_text
from mixq.plan import uniform_plan

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet18", "mobilenet_v2")
PARTS = ("xc7z020", "xc7z045")
RHOS = [round(0.05 * i, 2) for i in range(1, 20)]


def plan_for(model: str, names: list[str], rho: float) -> Any:
    w, a = FixedPoint(4), FixedPoint(4, signed=False)
    if rho >= 1.0:
        return uniform_plan(model, names, SumOfPowers(4), a, signed_inputs=names[:1])
    if rho <= 0.0:
        return uniform_plan(model, names, w, a, signed_inputs=names[:1])
    return uniform_plan(model, names, w, a, signed_inputs=names[:1], weight_alt=SumOfPowers(4), alt_ratio=rho)


def run_design(specs: list[Any], plan: Any, part: str, arch: str) -> Estimate | None:
    """The estimate on one part; streaming weights that do not fit on chip come from DDR."""
    if arch == "overlay":
        return estimate(specs, plan, part, "overlay")
    try:
        e = estimate(specs, plan, part, "streaming", options=ArchOptions(ddr_weights="auto"))
    except HardwareError:
        return None
    return e if e.fits else None


def summarize(e: Estimate | None) -> dict[str, Any]:
    if e is None:
        return {"fits": False, "fps": 0.0, "note": "does not fit"}
    return {"fits": e.fits, "fps": round(e.fps, 2), "parts": e.n_parts, "gops": round(e.gops, 2),
            "peak_fraction": round(e.peak_fraction, 4), "latency_ms": round(e.latency_ms, 3),
            "bottleneck": e.bottleneck, "resources": e.resources.to_dict(),
            "utilization": {k: round(v, 3) for k, v in e.utilization.items()},
            "cores": list(e.cores), "ddr_weight_layers": len(e.ddr_weights),
            "memory_bound_share": round(sum(ly.seconds for ly in e.layers if ly.bound == "memory")
                                        / max(sum(ly.seconds for ly in e.layers), 1e-12), 3),
            "peak_gmacs": round(e.peak_macs_per_s / 1e9, 2)}


def main() -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = []
    for model in MODELS:
        specs = capture(zoo.load(model), zoo.input_shape(model))
        names = [s.name for s in specs if s.is_compute]
        for part in PARTS:
            for arch in ("overlay", "streaming"):
                dsp = run_design(specs, plan_for(model, names, 0.0), part, arch)
                sp2 = run_design(specs, plan_for(model, names, 1.0), part, arch)
                best_rho, best = 0.0, None
                scan = {}
                for rho in RHOS:
                    e = run_design(specs, plan_for(model, names, rho), part, arch)
                    scan[rho] = round(e.fps / e.n_parts, 2) if e else 0.0
                    # compare per part: a streaming design spread over more parts is not a win by itself
                    if e and (best is None or e.fps / e.n_parts > best.fps / best.n_parts):
                        best_rho, best = rho, e
                r = {"model": model, "part": part, "arch": arch, "all_dsp": summarize(dsp),
                     "all_sp2": summarize(sp2), "msq": {**summarize(best), "rho": best_rho},
                     "fps_by_rho": scan}

                def per_part(e: Estimate | None) -> float:
                    return e.fps / e.n_parts if e else 0.0

                base = per_part(dsp)
                # a ratio needs both designs to fit
                r["msq_over_dsp"] = round(per_part(best) / base, 2) if base and best else None
                r["sp2_over_dsp"] = round(per_part(sp2) / base, 2) if base and sp2 else None
                rows.append(r)
                print(f"{model:13s} {part} {arch:9s} all-DSP {per_part(dsp):9.1f}  all-SP2 {per_part(sp2):9.1f}  "
                      f"MSQ(rho={best_rho:.2f}) {per_part(best):9.1f}  x{r['msq_over_dsp']}", flush=True)
    doc = {"benchmark": "hw_msq_ratio", "bits": "W4A4 (first layer input signed 4-bit)",
           "throughput": "frames/s on one part",
           "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "hw_msq_ratio.json", doc)
    atomic_write_text(RESULTS / "hw_msq_ratio.md", markdown(doc))
    return doc


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# MSQ row-share vs all-DSP vs all-SP2 (4-bit), mixq hardware model", "",
             "Frames/s on one part (W4A4, batch 1, catalog clocks: XC7Z020 100 MHz, XC7Z045 150 MHz); in "
             "brackets the share of the device's physical peak MAC/s (all DSPs packed two 4-bit products "
             "each + all LUTs as the cheapest 4-bit LUT lane). Streaming keeps weights on chip where they "
             "fit and streams the rest from DDR. Regenerate: `.venv/bin/python benchmarks/hw_msq_ratio.py` "
             "(~3 min).", "",
             "| model | part | template | all-DSP | all-SP2 | MSQ best ρ | ρ* | MSQ / all-DSP | SP2 / all-DSP "
             "| MSQ / all-DSP before |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    before = _before()

    def cell(s: dict[str, Any]) -> str:
        if not s.get("fps"):
            return "does not fit"
        n = s.get("parts", 1)
        pre = f"{n}× " if n and n > 1 else ""
        return f"{pre}{s['fps'] / max(n, 1):,.1f} ({100 * s['peak_fraction']:.0f}%)"

    def ratio(x: float | None) -> str:
        return f"{x}×" if x else "—"

    for r in doc["rows"]:
        rho = f"{r['msq']['rho']:.2f}" if r["msq"].get("fps") else "—"
        lines.append(f"| {r['model']} | {r['part']} | {r['arch']} | {cell(r['all_dsp'])} | {cell(r['all_sp2'])} | "
                     f"{cell(r['msq'])} | {rho} | {ratio(r['msq_over_dsp'])} | {ratio(r['sp2_over_dsp'])} | "
                     f"{before.get((r['model'], r['part'], r['arch']), '—')} |")
    return "\n".join(lines) + "\n" + discussion(doc)


def _before() -> dict[tuple[str, str, str], str]:
    """MSQ / all-DSP of the earlier run stored in hw_msq_ratio.before.json (none: an empty table)."""
    p = RESULTS / "hw_msq_ratio.before.json"
    if not p.exists():
        return {}
    rows = json.loads(p.read_text())["rows"]
    return {(r["model"], r["part"], r["arch"]): f"{r['msq_over_dsp']}×" for r in rows}


def lane_costs() -> dict[str, float]:
    """LUTs per 4-bit MAC lane (16-lane unit with its adder tree and accumulator) and per packed DSP lane."""
    from mixq.hw import CostModel, PeConfig

    m = CostModel.default()
    return {k: m.pe(PeConfig(k, 4, 4, 16, acc_len=1152)).lut / (32 if k == "fixed_dsp2" else 16)
            for k in ("sp2", "fixed_lut", "pot", "fixed_dsp2")}


def discussion(doc: dict[str, Any]) -> str:
    c = lane_costs()
    ov = [r for r in doc["rows"] if r["arch"] == "overlay" and r["msq_over_dsp"]]
    st = [r for r in doc["rows"] if r["arch"] == "streaming" and r["msq_over_dsp"]]

    def rng(rs: list[dict[str, Any]]) -> str:
        return f"{min(r['msq_over_dsp'] for r in rs)}×–{max(r['msq_over_dsp'] for r in rs)}×" if rs else "n/a"

    def ideal(r: dict[str, Any]) -> float:
        msq = sum(k["macs_per_cycle"] for k in r["msq"]["cores"])
        dsp = sum(k["macs_per_cycle"] for k in r["all_dsp"]["cores"]) or 1
        return msq / dsp

    cheaper = c["sp2"] < c["fixed_lut"]
    verdict = ("cheaper than a LUT multiplier: the lane is two shifts and an add, its sign rides on the "
               "adder tree's carry-ins" if cheaper else "*not* cheaper than a LUT multiplier here")
    rows = "\n".join(
        f"  | {r['model']} | {r['part']} | {ideal(r):.1f}× | {r['msq_over_dsp']}× | "
        f"{100 * r['msq']['memory_bound_share']:.0f}% |" for r in ov)
    tight = [r for r in doc["rows"] if r["arch"] == "streaming" and r["all_dsp"].get("fps") and not r["msq"].get("fps")]
    no_fit = "".join(
        f"* **{r['model']} streaming on the {r['part'].upper()}: no MSQ design fits.** The all-DSP design "
        f"fits with {100 * r['all_dsp']['utilization']['lut']:.0f}% of the part's LUTs "
        "(the estimator leaves 15% free). In streaming every layer "
        "is its own engine, so any SP2 share puts at least one LUT unit (lanes, adder tree, accumulator, "
        "requantizer) beside the DSP unit of each layer, and the smallest such design already needs more LUTs "
        "than the part has: there is no ratio to give.\n" for r in tight)
    return f"""
## Where mixq lands, and why

The MSQ paper reports 2.1×–4.1× over all-DSP on XC7Z020/XC7Z045. mixq's model gives
**{rng(ov)} in the overlay** (MSQ's own template) and **{rng(st)} in streaming**.

* **The gain is mostly the LUTs put to work.** One 4-bit SP2 lane costs
  {c['sp2']:.1f} LUTs in yosys' mapping of mixq's PE (16-lane unit incl. its adder tree and
  accumulator), a 4×4 LUT-multiplier lane {c['fixed_lut']:.1f}: at 4 bits SP2 is {verdict}
  (see `hw_calibration.md`). A packed DSP lane
  takes half a DSP48E1 and {c['fixed_dsp2']:.1f} LUTs. Both Zynq parts have ~242 LUTs per DSP,
  so the LUT core adds ~2.5× the DSP core's MACs per cycle and the compute-only speed-up is
  `1 + LUT lanes / DSP lanes`:

  | model | part | MACs/cycle, MSQ / all-DSP | frames/s, MSQ / all-DSP | MSQ time memory-bound |
  |---|---|---:|---:|---:|
{rows}

* **The XC7Z045 runs into the DDR roofline.** It has ~4× the XC7Z020's compute but only 1.25×
  its DDR bandwidth (5.3 vs 4.3 GB/s, 80% sustained), and an overlay re-reads weights and
  activations every layer at batch 1: MSQ's faster cores spend much of the frame waiting on
  DDR, which caps the gain below the compute ratio (MobileNetV2 the most: its small layers
  move many bytes per MAC). The paper's 4.1× on the Z045 needs more bandwidth or batching
  than this board model gives.
* **ρ* ≈ LUT lanes / (LUT + DSP lanes)** (0.80–0.85 in the overlay here): both cores finish a layer together.
  The model scans ρ; the best value tracks the core sizes, as MSQ prescribes.
* **All-SP2 already beats all-DSP** on these LUT-rich parts, so MSQ's margin over all-SP2 is
  the DSP core's share (5–11% in the overlay here, none where DDR binds). MSQ's baseline is all-DSP.
* **MobileNetV2 gains less**: depthwise layers have 9-element rows on 16-lane units (lanes
  idle) and move many bytes per MAC.
* **Streaming is memory-bound on these parts.** ResNet-18's 4-bit weights (46.8 Mb) and
  MobileNetV2's (13.9 Mb) exceed the XC7Z020's 4.9 Mb of block RAM (ResNet-18's also the
  XC7Z045's 19 Mb), so the weights of the low-resolution layers stream from DDR (re-read per
  output pixel) and the DDR, or the block RAM left for the on-chip layers, sets the frame rate;
  the LUT/DSP mix then hardly matters (~1×). Where the weights fit (MobileNetV2 on the XC7Z045)
  the compute mix shows again, until block RAM binds.
* Peak fractions are against every DSP packed *plus* every LUT as a 4-bit lane — a bound no
  design reaches, since the LUTs also hold trees, control and LUTRAM.
{no_fit}"""


if __name__ == "__main__":
    import sys

    if "--md-only" in sys.argv:  # re-render the markdown from the stored JSON
        d = json.loads((RESULTS / "hw_msq_ratio.json").read_text())
        atomic_write_text(RESULTS / "hw_msq_ratio.md", markdown(d))
    else:
        out = main()
        print(json.dumps({"seconds": out["seconds"]}))
