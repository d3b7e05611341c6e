"""Generated PEs vs plain reference circuits vs the cost model (issue #19, "hardware truth").

Every PE of :func:`mixq.rtl.reference_sweep.reference_sweep` is synthesized (yosys ``synth_xilinx``,
7-series) twice: as mixq's generated circuit (:mod:`mixq.rtl.pe`) and as the plainest correct
reference circuit of the same function (:mod:`mixq.rtl.reference`). Per PE this reports both
circuits' LUT/FF/DSP/CARRY4 and longest path (yosys ``sta``), the cheaper one and the current cost
model's error against it; per kind the medians and worst errors.

*Cheaper*: fewer LUTs at the same DSP count, among the circuits that keep the clock — whose longest
path is no longer than the slowest generated dot unit's (the clock mixq's engines already run at).
The references sum flat and unpipelined (a 16-deep DSP cascade: 23.8 ns against the generator's
4.2 ns), so a reference that is smaller but slower does not do the same work per second. The table
also gives the count by LUTs alone (no clock rule).

Records live in ``src/mixq/hw/data/reference_records.json`` (each with the SHA-1 of the Verilog it
came from: a re-run only synthesizes circuits that changed). Writes
``benchmarks/results/hw_reference.json`` and ``.md``. Run::

    .venv/bin/python benchmarks/hw_reference.py                  # synthesize what changed (2 yosys at a time)
    .venv/bin/python benchmarks/hw_reference.py --generator-only # re-synthesize changed generated PEs only
    .venv/bin/python benchmarks/hw_reference.py --refit          # no yosys: report the stored records
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from mixq.hw.cost import CostModel
from mixq.hw.kinds import PE_KINDS
from mixq.hw.pe import PeConfig
from mixq.io import atomic_write_json, atomic_write_text
from mixq.rtl.reference import DEFAULT_SIGN
from mixq.rtl.reference_sweep import (
    RECORDS_PATH,
    clock_budget,
    compare,
    load_reference_records,
    reference_sweep,
    run_reference_sweep,
)

RESULTS = Path(__file__).resolve().parent / "results"


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        ks = [r for r in rows if r["kind"] == kind]
        ratios = [r["ref_over_gen_lut"] for r in ks]
        out[kind] = {
            "pes": len(ks), "ref_cheaper": sum(r["cheaper"] == "reference" for r in ks),
            "ref_over_gen_lut_median": statistics.median(ratios), "ref_over_gen_lut_min": min(ratios),
            "ref_over_gen_lut_max": max(ratios),
            "lut_err_median": statistics.median(r["lut_err"] for r in ks), "lut_err_max": max(r["lut_err"] for r in ks),
            "ff_err_median": statistics.median(r["ff_err"] for r in ks), "ff_err_max": max(r["ff_err"] for r in ks),
            "dsp_exact": sum(r["dsp_ok"] for r in ks),
            "within_15": sum(r["lut_err"] <= 0.15 for r in ks), "within_20": sum(r["lut_err"] <= 0.20 for r in ks),
            "within_15_lut_only": sum(r["lut_err_lut_only"] <= 0.15 for r in ks),
            "ref_smaller_but_slower": sum(r["ref_smaller_but_slower"] for r in ks),
            "lut_err_gen_max": max(r["lut_err_gen"] for r in ks),
        }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(doc: dict[str, Any], rows: list[dict[str, Any]], kinds: dict[str, dict[str, Any]],
             findings: list[str]) -> str:
    n = len(rows)
    budget = clock_budget(doc)
    lines = [
        "# Generated PEs vs plain reference circuits (issue #19)", "",
        f"Every PE of `mixq.rtl.reference_sweep.reference_sweep()` synthesized with `yosys synth_xilinx` "
        f"(7-series, {doc.get('tool', '')}) as mixq's generated circuit (`mixq.rtl.pe`) and as the plainest "
        f"correct reference circuit (`mixq.rtl.reference`: combinational `w*x` products, one flat sum, one "
        f"registered accumulator, inputs registered once; SP2/PoT sign-magnitude with the `{DEFAULT_SIGN}` "
        "sign style). LUT kinds `-nodsp`, DSP kinds the default flow. Longest path: yosys `sta` on the mapped "
        "netlist with the delays of yosys' 7-series cell library (Project X-Ray's Artix-7 figures; logic only, no "
        "routing). *Cheaper*: fewer LUTs at the same DSP count (a reference yosys maps to a different number of "
        "DSPs is a different mapping; the generator's stands) among the circuits that keep the clock: a longest "
        f"path no longer than the slowest generated dot unit's ({budget / 1000:.2f} ns). The references are not "
        "pipelined (one flat combinational sum per cycle): equal function and ports, often a lower clock. "
        "Model error: the current `CostModel.default()` against the cheaper circuit (DSP: exact or not); "
        "*by LUTs alone*: against the one with fewer LUTs, whatever its clock. "
        f"Both sides are simulated against Python in `tests/test_rtl_reference.py`. {n} PEs.", "",
        "## Findings", "", *[f"* {f}" for f in findings], "",
        "Notes (read off the tables below, Yosys 0.23): the DSP references' flat sums ride on the DSP "
        "post-adder cascade, so their LUTs stay flat from 4 to 16 lanes (an unpipelined 16-deep cascade, "
        "whose longest path grows by one PCIN->PCOUT, 1.25 ns, per lane); "
        "a `fixed_lut` multiply-accumulate in the default flow goes to a DSP whenever the accumulator is "
        ">= 9 bits wide, even for a 4x4 product (the `acc + w*x` multiply is as wide as the accumulator); "
        "the flat `x0 + x1 + ...` tree and the per-lane `s ? -m : m` sign are what yosys does worst with "
        "(tree, SP2 / PoT `negate`), the flat XNOR popcount what it does best with.", "",
        "## Per kind", "",
        "| kind | PEs | ref cheaper | ref smaller but slower | ref/gen LUT median (min–max) | model LUT err median / "
        "worst | within 15% / 20% | within 15% by LUTs alone | model FF err median / worst | DSP exact | "
        "model LUT err vs generator, worst |",
        "|---|---:|---:|---:|---|---|---|---:|---|---:|---:|"]
    for k, s in kinds.items():
        lines.append(
            f"| {k} | {s['pes']} | {s['ref_cheaper']} | {s['ref_smaller_but_slower']} | "
            f"{s['ref_over_gen_lut_median']:.2f} "
            f"({s['ref_over_gen_lut_min']:.2f}–{s['ref_over_gen_lut_max']:.2f}) | {_pct(s['lut_err_median'])} / "
            f"{_pct(s['lut_err_max'])} | {s['within_15']} / {s['within_20']} | {s['within_15_lut_only']} | "
            f"{_pct(s['ff_err_median'])} / {_pct(s['ff_err_max'])} | {s['dsp_exact']}/{s['pes']} | "
            f"{_pct(s['lut_err_gen_max'])} |")
    dd = [r for r in rows if "dsp_default" in r]
    if dd:
        lines += ["", "## fixed_lut references in the default flow (does yosys put the multiply on a DSP?)", "",
                  "| PE | product bits | LUT -nodsp | LUT default | DSP default | `mul_dsps` rule on the product |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in dd:
            cfg = PeConfig.from_dict(r["pe"])
            lines.append(f"| {r['name']} | {cfg.product_bits} | {r['reference']['lut']} | {r['dsp_default']['lut']} "
                         f"| {r['dsp_default']['dsp']} | {r['dsp_rule']} |")
    sg = [r for r in rows if "sign_negate" in r]
    if sg:
        lines += ["", f"## SP2 / PoT sign styles (references; the default is `{DEFAULT_SIGN}`)", "",
                  "`negate`: `p_i = s_i ? -m_i : m_i` per lane; `xor`: `p_i = m_i ^ {s_i}` per lane and the "
                  "popcount of the signs added once in the flat sum.", "",
                  "| PE | LUT xor | LUT negate | CARRY4 xor | CARRY4 negate |", "|---|---:|---:|---:|---:|"]
        for r in sg:
            lines.append(f"| {r['name']} | {r['reference']['lut']} | {r['sign_negate']['lut']} "
                         f"| {r['reference']['carry']} | {r['sign_negate']['carry']} |")
    lines += ["", "## Per PE", "",
              "| PE | gen LUT | gen FF | gen DSP | gen CARRY4 | gen ns | ref LUT | ref FF | ref DSP | ref CARRY4 "
              "| ref ns | cheaper | ref/gen LUT | model LUT | model FF | model DSP | LUT err | LUT err by LUTs alone "
              "| FF err |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        g, f, m = r["generator"], r["reference"], r["model"]
        slow = "" if r["ref_keeps_clock"] else " (slow)"
        lines.append(f"| {r['name']} | {g['lut']} | {g['ff']} | {g['dsp']} | {g['carry']} "
                     f"| {g['arrival_ps'] / 1000:.2f} | {f['lut']} | {f['ff']} | {f['dsp']} | {f['carry']} "
                     f"| {f['arrival_ps'] / 1000:.2f}{slow} "
                     f"| {r['cheaper']} | {r['ref_over_gen_lut']:.2f} | {m['lut']:.0f} "
                     f"| {m['ff']:.0f} | {m['dsp']:.0f}{'' if r['dsp_ok'] else ' ✗'} | {_pct(r['lut_err'])} "
                     f"| {_pct(r['lut_err_lut_only'])} | {_pct(r['ff_err'])} |")
    return "\n".join(lines) + "\n"


def findings(rows: list[dict[str, Any]], kinds: dict[str, dict[str, Any]], budget: int) -> list[str]:
    """Plain statements of the measured numbers (no hand-written claims)."""
    dots = [r for r in rows if PE_KINDS[r["kind"]].is_dot]
    slowest = max(dots, key=lambda r: r["generator"]["arrival_ps"])
    out = [f"Clock: the slowest generated dot unit, {slowest['name']}, has a {budget / 1000:.2f} ns longest path; "
           f"generated dot units {min(r['generator']['arrival_ps'] for r in dots) / 1000:.2f}–{budget / 1000:.2f} ns, "
           f"references {min(r['reference']['arrival_ps'] for r in dots) / 1000:.2f}–"
           f"{max(r['reference']['arrival_ps'] for r in dots) / 1000:.2f} ns."]
    slow = [r for r in rows if r["ref_smaller_but_slower"]]
    if slow:
        out.append(f"References with fewer LUTs that do not keep the clock ({len(slow)}; LUT ref vs gen, path ref vs "
                   "gen): " + ", ".join(f"{r['name']} ({r['reference']['lut']} vs {r['generator']['lut']}, "
                                        f"{r['reference']['arrival_ps'] / 1000:.1f} vs "
                                        f"{r['generator']['arrival_ps'] / 1000:.1f} ns)" for r in slow) + ".")
    beats = [k for k, s in kinds.items() if s["ref_cheaper"] > s["pes"] / 2]
    loses = [k for k, s in kinds.items() if s["ref_cheaper"] <= s["pes"] / 2]
    for k in beats:
        s = kinds[k]
        out.append(f"**{k}**: the reference is cheaper on {s['ref_cheaper']}/{s['pes']} PEs, median "
                   f"{_pct(1 - s['ref_over_gen_lut_median'])} fewer LUTs (range {s['ref_over_gen_lut_min']:.2f}–"
                   f"{s['ref_over_gen_lut_max']:.2f}x the generator's).")
    if loses:
        out.append("The generator is cheaper (or equal) on most PEs of: " + ", ".join(
            f"{k} (reference {kinds[k]['ref_over_gen_lut_median']:.2f}x its LUTs, median)" for k in loses) + ".")
    lut_ok = sum(r["lut_err"] <= 0.15 for r in rows)
    wide = [r for r in rows if r["simd"] >= 4 and r["pe"]["kind"] not in ("tree", "ram")]
    out.append(f"Current model vs the cheaper circuit that keeps the clock: {lut_ok}/{len(rows)} PEs within 15% LUT, "
               f"{sum(r['lut_err'] <= 0.2 for r in wide)}/{len(wide)} dot units of 4–16 lanes within 20%, "
               f"DSP exact on {sum(r['dsp_ok'] for r in rows)}/{len(rows)}. By LUTs alone (no clock rule): "
               f"{sum(r['lut_err_lut_only'] <= 0.15 for r in rows)}/{len(rows)} within 15%, "
               f"{sum(r['lut_err_lut_only'] <= 0.2 for r in wide)}/{len(wide)} within 20%.")
    miss = [r for r in rows if r["lut_err"] > 0.15]
    if miss:
        out.append("Outside 15%: " + ", ".join(f"{r['name']} (model {r['model']['lut']:.0f} vs {r['cheaper']} "
                                               f"{r[r['cheaper']]['lut']}, {_pct(r['lut_err'])})" for r in miss) + ".")
    other = [r for r in rows if r["other_mapping"]]
    if other:
        out.append("References yosys maps to a different DSP count than the generator (generator -> reference "
                   "DSPs, LUTs): " + ", ".join(f"{r['name']} ({r['generator']['dsp']} -> {r['reference']['dsp']}, "
                                               f"{r['generator']['lut']} -> {r['reference']['lut']})"
                                               for r in other) + ".")
    bad = [r for r in rows if not r["dsp_ok"]]
    if bad:
        out.append("DSP mismatches (model vs the cheaper circuit): " + ", ".join(
            f"{r['name']} ({r['model']['dsp']:.0f} vs {min(r['generator']['dsp'], r['reference']['dsp'])})"
            for r in bad[:12]) + (" ..." if len(bad) > 12 else "") + ".")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--refit", action="store_true", help="no synthesis: report the stored records")
    ap.add_argument("--generator-only", action="store_true", help="re-synthesize changed generated PEs only")
    ap.add_argument("--jobs", type=int, default=2, help="yosys processes at a time (default 2)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.refit:
        doc = load_reference_records(RECORDS_PATH)
    else:
        doc = run_reference_sweep(reference_sweep(), jobs=args.jobs, generator_only=args.generator_only,
                                  progress=lambda n, s, b: print(f"{n} [{s}] LUT {b['lut']} FF {b['ff']} "
                                                                 f"DSP {b['dsp']} ({b['seconds']} s)", flush=True))
    rows = compare(doc, CostModel.default())
    kinds = summarize(rows)
    found = findings(rows, kinds, clock_budget(doc))
    atomic_write_json(RESULTS / "hw_reference.json", {"tool": doc.get("tool", ""), "sign_style": DEFAULT_SIGN,
                                                      "clock_budget_ps": clock_budget(doc),
                                                      "kinds": kinds, "findings": found, "pes": rows})
    atomic_write_text(RESULTS / "hw_reference.md", markdown(doc, rows, kinds, found))
    print(f"{len(rows)} PEs compared in {time.perf_counter() - t0:.0f} s; "
          f"wrote {RESULTS / 'hw_reference.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
