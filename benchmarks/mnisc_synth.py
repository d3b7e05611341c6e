"""The single-engine (mnisc) EU: yosys synthesis of the generated core against the template's estimate.

Each configuration is a set of the EU's Verilog parameters (:data:`mixq.rtl.mnisc.PARAMS`): ``P`` MAC rows,
the weight width ``WW`` (8 or 4), and every other width (data word, accumulator, the output pipeline's
stages, addresses, counters) as :func:`mixq.rtl.mnisc.eu_image` sizes it from the proven ranges of the zoo
U-Net lowered at 64 x 64 after W8A8 or W4A4 PTQ — or, for three fit points, a hand-set width ("synthetic")
so that every width varies in the fit. ``mnisc_core`` (sequencer, address generators, ``P`` MAC rows, the
two-stage requantizer; its memories are outside) is synthesized with ``yosys synth_xilinx`` (one run per
configuration, a timeout each) and compared with :func:`mixq.hw.mnisc.core_resources` for the same widths.

The LUT / FF terms of the sequencer, the row multiplexers and the requantizer are fitted
(:func:`mixq.hw.mnisc.fit_core`) on the configurations marked ``fit`` only and shipped in
``src/mixq/hw/data/mnisc_coefficients.json``; the ``check`` configurations are not seen by the fit.
DSPs are by rule (:func:`mixq.hw.bits.mul_dsps`), not fitted.

Writes ``benchmarks/results/mnisc_synth.json`` and ``mnisc_synth.md``.
Run: ``nice .venv/bin/python benchmarks/mnisc_synth.py [--fit] [--resynth] [--jobs 2]`` (~10 min on one
core; measured records are kept in the JSON and reused unless ``--resynth``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
COEFS = ROOT / "src" / "mixq" / "hw" / "data" / "mnisc_coefficients.json"
TIMEOUT_S = 300.0

# name, role, width source, P, WW; sources: the U-Net's proven widths at W8A8 / W4A4, or a synthetic set
CONFIGS: list[tuple[str, str, str, int, int]] = [
    ("u8-p2-w8", "fit", "unet8", 2, 8),
    ("u8-p8-w4", "fit", "unet8", 8, 4),
    ("u4-p2-w4", "fit", "unet4", 2, 4),
    ("syn-wide-p4-w8", "fit", "wide", 4, 8),
    ("syn-narrow-p8-w4", "fit", "narrow", 8, 4),
    ("syn-mid-p16-w8", "fit", "mid", 16, 8),
    ("u8-p4-w8", "check", "unet8", 4, 8),
    ("u8-p4-w4", "check", "unet8", 4, 4),
    ("u8-p16-w8", "check", "unet8", 16, 8),
    ("u4-p4-w4", "check", "unet4", 4, 4),
    ("u4-p8-w8", "check", "unet4", 8, 8),
    ("u4-p16-w4", "check", "unet4", 16, 4),
]
SYNTHETIC: dict[str, dict[str, int]] = {  # hand-set widths: the old test's core, a narrow one, a middle one
    "wide": {"DW": 16, "ACCW": 32, "VW": 40, "M1W": 18, "QW": 40, "M2W": 18, "EW": 40, "P1W": 58, "P2W": 58,
             "NW": 6, "ASW": 5, "AW": 24, "IAW": 12, "WAW": 16, "PAW": 16, "CW": 16},
    "narrow": {"DW": 12, "ACCW": 20, "VW": 20, "M1W": 10, "QW": 16, "M2W": 10, "EW": 12, "P1W": 30, "P2W": 26,
               "NW": 4, "ASW": 2, "AW": 14, "IAW": 8, "WAW": 10, "PAW": 10, "CW": 8},
    "mid": {"DW": 20, "ACCW": 28, "VW": 30, "M1W": 14, "QW": 24, "M2W": 6, "EW": 20, "P1W": 44, "P2W": 30,
            "NW": 5, "ASW": 3, "AW": 18, "IAW": 10, "WAW": 14, "PAW": 13, "CW": 12},
}


def unet_widths(bits: int) -> dict[str, int]:
    """The EU parameters :func:`eu_image` sizes for the zoo U-Net at 64 x 64 after PTQ (W8A8 / W4A4)."""
    import torch

    from mixq import api
    from mixq.engine import to_integer
    from mixq.engine.program import lower
    from mixq.formats import FixedPoint
    from mixq.rtl.mnisc import eu_image, range_bits, tensor_ranges
    from mixq.zoo.unet import unet

    torch.manual_seed(0)
    model, x = unet().eval(), torch.rand(8, 3, 64, 64)
    kw: dict[str, Any] = {} if bits == 8 else {"weight": FixedPoint(bits=4, signed=True, narrow=True),
                                               "act": FixedPoint(bits=4, signed=False, narrow=False)}
    q = api.quantize(model, api.default_plan("m", model, x, **kw), x)
    prog = lower(to_integer(q, x))  # type: ignore[arg-type]
    dw = max(range_bits(min(lo, -1), hi) for lo, hi in tensor_ranges(prog).values())
    ww = max(range_bits(int(s.weight.min()), int(s.weight.max())) for s in prog.conv_steps())
    return eu_image(prog, 4, ww=ww, dw=dw).widths


def config_widths(source: str, p: int, ww: int, cache: dict[str, dict[str, int]]) -> dict[str, int]:
    if source not in cache:
        cache[source] = unet_widths(int(source[4:])) if source.startswith("unet") else SYNTHETIC[source]
    w = {**cache[source], "P": p, "WW": ww}
    w["IW"] = max(w["AW"], w["WAW"], w["PAW"], w["CW"])
    return w


def synth(widths: dict[str, int]) -> dict[str, Any]:
    from mixq.rtl.mnisc import eu_verilog
    from mixq.rtl.synth import synthesize_verilog

    r = synthesize_verilog(eu_verilog(**widths), "mnisc_core", timeout_s=TIMEOUT_S)
    return {"lut": r.lut, "ff": r.ff, "dsp": r.dsp, "bram": r.bram18, "carry": r.carry, "seconds": round(r.seconds, 1)}


def _key(w: dict[str, int]) -> str:
    return json.dumps(w, sort_keys=True)


def run(fit: bool, resynth: bool, jobs: int) -> dict[str, Any]:
    from mixq.hw.mnisc import EuWidths, core_resources, fit_core, load_core_coefficients

    old = json.loads((OUT / "mnisc_synth.json").read_text()) if (OUT / "mnisc_synth.json").exists() else {}
    measured = {} if resynth else {_key(r["widths"]): r["yosys"] for r in old.get("rows", []) if "yosys" in r}
    cache: dict[str, dict[str, int]] = {}
    rows: list[dict[str, Any]] = [{"name": n, "role": role, "source": src, "widths": config_widths(src, p, ww, cache)}
                                  for n, role, src, p, ww in CONFIGS]
    todo = [r for r in rows if _key(r["widths"]) not in measured]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for r, res in zip(todo, pool.map(synth, [r["widths"] for r in todo]), strict=True):
            measured[_key(r["widths"])] = res
            print(f"{r['name']}: {res}", file=sys.stderr, flush=True)
    for r in rows:
        r["yosys"] = measured[_key(r["widths"])]
    if fit:
        fitted = fit_core([(EuWidths.from_params(r["widths"]), r["yosys"]) for r in rows if r["role"] == "fit"],
                         meta={"source": "benchmarks/mnisc_synth.py", "yosys": "0.23 synth_xilinx (xc7)",
                               "fit_on": [r["name"] for r in rows if r["role"] == "fit"]})
        COEFS.write_text(json.dumps(fitted, indent=1) + "\n", encoding="utf-8")
    coefs = load_core_coefficients(COEFS) if COEFS.exists() else None
    for r in rows:
        est = core_resources(EuWidths.from_params(r["widths"]), coefficients=coefs)
        tot = est["total"]
        r["estimate"] = {"lut": round(tot.lut), "ff": round(tot.ff), "dsp": round(tot.dsp), "bram": round(tot.bram),
                         "terms": {k: v.to_dict() for k, v in est.items() if k != "total"}}
        r["lut_ratio"] = round(tot.lut / r["yosys"]["lut"], 3)
        r["ff_ratio"] = round(tot.ff / r["yosys"]["ff"], 3)
    return {"machine": platform.machine(), "synth_seconds_this_run": round(time.perf_counter() - t0, 1),
            "timeout_s": TIMEOUT_S, "rows": rows}


HEAD = ("| configuration | role | P | WW | DW | ACCW | requant VW/M1W/QW/M2W/EW | AW | yosys LUT / FF / DSP / BRAM "
        "| estimate LUT / FF / DSP / BRAM | LUT ratio | FF ratio |")


def table(res: dict[str, Any]) -> str:
    lines = [HEAD, "|---|---|---:|---:|---:|---:|---|---:|---|---|---:|---:|"]
    for r in res["rows"]:
        w, y, e = r["widths"], r["yosys"], r["estimate"]
        pipe = "/".join(str(w[k]) for k in ("VW", "M1W", "QW", "M2W", "EW"))
        lines.append(f"| {r['name']} ({r['source']}) | {r['role']} | {w['P']} | {w['WW']} | {w['DW']} | {w['ACCW']} | "
                     f"{pipe} | {w['AW']} | {y['lut']:,} / {y['ff']:,} / {y['dsp']} / {y['bram']} | "
                     f"{e['lut']:,} / {e['ff']:,} / {e['dsp']} / {e['bram']} | {r['lut_ratio']:.2f} | "
                     f"{r['ff_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


NOTES = """`mnisc_core` (sequencer, address generators, P MAC rows, the shared two-stage requantizer; memories
outside) synthesized with yosys `synth_xilinx` (xc7), one run per configuration, against
`mixq.hw.mnisc.core_resources` at the same widths. Widths of the `unet8` / `unet4` rows are the ones
`rtl.mnisc.eu_image` sizes from the proven ranges of the zoo U-Net at 64 x 64 after W8A8 / W4A4 PTQ (the
fused residual add's M-scaled weights and raw-accumulator operand set ACCW and the first requantizer); WW is
the configuration's. LUT / FF coefficients are fitted on the `fit` rows only; the `check` rows are not seen
by the fit. DSPs by the mul2dsp rule (not fitted). BRAM: the core holds no memory.
"""


def summary(res: dict[str, Any]) -> str:
    out = []
    for role in ("fit", "check"):
        rows = [r for r in res["rows"] if r["role"] == role]
        worst = max(abs(r["lut_ratio"] - 1) for r in rows)
        dsp = all(r["estimate"]["dsp"] == r["yosys"]["dsp"] for r in rows)
        out.append(f"- {role}: {len(rows)} configurations, worst LUT error {100 * worst:.1f}%, DSP exact: {dsp}")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the shipped coefficients on the fit rows")
    ap.add_argument("--resynth", action="store_true", help="synthesize every configuration again")
    ap.add_argument("--jobs", type=int, default=1, help="yosys runs at once")
    a = ap.parse_args()
    from mixq.io import atomic_write_json, atomic_write_text

    res = run(a.fit, a.resynth, a.jobs)
    OUT.mkdir(exist_ok=True)
    atomic_write_json(OUT / "mnisc_synth.json", res)
    atomic_write_text(OUT / "mnisc_synth.md", "# mnisc EU: yosys vs the template\n\n" + NOTES + "\n" + table(res)
                      + "\n" + summary(res))
    print(table(res))


if __name__ == "__main__":
    main()
