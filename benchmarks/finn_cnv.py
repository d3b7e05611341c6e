"""CNV-W1A1 at FINN's folding on XC7Z020: mixq's streaming estimate beside FINN's post-synthesis figures.

The design is the one FINN built for its published figures: Xilinx/finn at commit
e74913dc2a22e96f5b4aa50ae3c116e0ca2590e1 (dev, 2020-09-05, the merge of PR #209),
``tests/end2end/test_zynqbuild_end2end_cnv_w1a1.py``: Pynq-Z1 (xc7z020clg400-1), 10 ns clock,
``mem_mode = "decoupled"`` (weights in a memory streamer, ``ram_style`` left at its default "auto"),
the folding and FIFO depths below. FINN's figures are from PR #209
(https://github.com/Xilinx/finn/pull/209, comment by maltanar, 2020-09-05): "Post-synthesis
resources (excluding shell)" of that cnv-w1a1 zynqbuild after the PR — the sum over the dataflow
nodes (MVAUs, sliding-window generators, max pools, FIFOs, width converters and the two IODMAs)
of Vivado's hierarchical utilisation (``LUT`` = total LUTs incl. LUTRAM and SRL).

mixq models the same network — CIFAR-10 CNV (3x32x32; 3x3 convolutions without padding
64-64-pool-128-128-pool-256-256, FC 512-512-10), 1-bit weights and activations, 8-bit input to the
first layer, the last layer without thresholds — with ``ArchOptions(dataflow="finn")``
(:mod:`mixq.hw.dataflow`) at FINN's PE/SIMD, and breaks the estimate down by component.
The shell (DMA and AXI interconnect) is reported apart and left out of the compared totals.

Writes benchmarks/results/finn_cnv.json and .md. Run: ``.venv/bin/python benchmarks/finn_cnv.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixq.formats import FixedPoint
from mixq.formats.binary import Binary
from mixq.graph.spec import LayerSpec
from mixq.hw import ArchOptions, estimate
from mixq.hw import streaming as st
from mixq.hw.cost import CostModel, Resources
from mixq.hw.estimate import apply_folding
from mixq.hw.lower import lower
from mixq.hw.parts import get_part
from mixq.hw.units import shell
from mixq.io import atomic_write_json, atomic_write_text
from mixq.plan import HwMapping, LayerPlan, QuantPlan

RESULTS = Path(__file__).resolve().parent / "results"
PART = "xc7z020"

FINN_COMMIT = "e74913dc2a22e96f5b4aa50ae3c116e0ca2590e1"
SOURCES = {
    "folding": f"Xilinx/finn@{FINN_COMMIT}:tests/end2end/test_zynqbuild_end2end_cnv_w1a1.py "
               "(test_end2end_zynqbuild_cnv_w1a1_fold; same PE/SIMD in "
               "Xilinx/finn-examples:build/bnn-pynq/folding_config/cnv-w1a1_folding_config.json)",
    "figures": "https://github.com/Xilinx/finn/pull/209 (maltanar, 2020-09-05): cnv-w1a1 zynqbuild after the "
               "PR, 'Post-synthesis resources (excluding shell)'",
    "weights": f"Xilinx/finn@{FINN_COMMIT}:src/finn/custom_op/fpgadataflow/streamingfclayer_batch.py "
               "(mem_mode decoupled, ram_style 'auto -- let Vivado decide'); finn-rtllib/memstream",
}
#: FINN's published figures (PR #209, after): BRAM36 counts a RAMB18 as half a RAMB36
FINN = {"lut": 21135, "ff": 31517, "srl": 1665, "bram36_blocks": 98, "bram18_blocks": 9, "dsp": 0}
FINN_BRAM36 = FINN["bram36_blocks"] + FINN["bram18_blocks"] / 2  # 102.5
ISSUE_QUOTED = {"lut": 21135, "ff": 31517, "bram36": 107, "dsp": 0}  # issue 19: 98 + 9 tiles

#: (PE, SIMD) per MVAU, in order (FINN: StreamingFCLayer_Batch_0..8)
FOLDING = {"conv0": (16, 3), "conv1": (32, 32), "conv2": (16, 32), "conv3": (16, 32), "conv4": (4, 32),
           "conv5": (1, 32), "fc0": (1, 4), "fc1": (1, 8), "fc2": (5, 1)}
#: FINN's FIFO depths: inFIFODepth of each MVAU (256, 256, 256, 256, 214, 2, 126, 62, 6) and of each
#: sliding-window generator (2, 51, 9, 106, 2, 2); InsertFIFO makes a FIFO for each depth above 2
SWG_DEPTHS = {"conv0": 2, "conv1": 51, "conv2": 9, "conv3": 106, "conv4": 2, "conv5": 2}
MVAU_DEPTHS = {"conv0": 256, "conv1": 256, "conv2": 256, "conv3": 256, "conv4": 214, "conv5": 2,
               "fc0": 126, "fc1": 62, "fc2": 6}
FIFOS = tuple((n, d) for n in FOLDING for d in (SWG_DEPTHS.get(n, 0), MVAU_DEPTHS[n]) if d > 2)
#: mixq layer -> FINN node
FINN_NAMES = {n: f"StreamingFCLayer_Batch_{i}" for i, n in enumerate(FOLDING)}

COMPONENTS = {  # engine detail key -> row of the breakdown
    "compute": "MVAU compute (XNOR / select lanes, popcount, accumulators)",
    "inbuf": "MVAU input buffers (inputBuf[SF], flip-flops)",
    "weights": "weight memories (decoupled streamers, Vivado's placement)",
    "requant": "thresholding units (comparators + threshold memories)",
    "linebuf": "sliding-window generators",
    "fifo": "stream FIFOs (SRL)",
    "control": "engine control (assumed)",
    "pool": "max pools",
}


def _conv(name: str, cin: int, cout: int, hw: int, prev: str, nxt: str) -> LayerSpec:
    o = hw - 2
    return LayerSpec(name, "conv", (cin, hw, hw), (cout, o, o), cin, cout, (3, 3), macs=o * o * cout * cin * 9,
                     params=cout * cin * 9, inputs=(prev,), outputs=(nxt,))


def _pool(name: str, c: int, hw: int, prev: str, nxt: str) -> LayerSpec:
    return LayerSpec(name, "maxpool", (c, hw, hw), (c, hw // 2, hw // 2), c, c, (2, 2), (2, 2),
                     inputs=(prev,), outputs=(nxt,))


def _fc(name: str, i: int, o: int, prev: str, nxt: str | None) -> LayerSpec:
    return LayerSpec(name, "linear", (i,), (o,), i, o, macs=i * o, params=i * o, inputs=(prev,),
                     outputs=(nxt,) if nxt else ())


def cnv_specs() -> list[LayerSpec]:
    """FINN's CIFAR-10 CNV (BNN-PYNQ / Brevitas ``CNV``): unpadded 3x3 convolutions, 2x2 max pools."""
    return [
        LayerSpec("input", "input", (), (3, 32, 32), outputs=("conv0",)),
        _conv("conv0", 3, 64, 32, "input", "conv1"), _conv("conv1", 64, 64, 30, "conv0", "pool0"),
        _pool("pool0", 64, 28, "conv1", "conv2"),
        _conv("conv2", 64, 128, 14, "pool0", "conv3"), _conv("conv3", 128, 128, 12, "conv2", "pool1"),
        _pool("pool1", 128, 10, "conv3", "conv4"),
        _conv("conv4", 128, 256, 5, "pool1", "conv5"), _conv("conv5", 256, 256, 3, "conv4", "flatten"),
        LayerSpec("flatten", "flatten", (256, 1, 1), (256,), inputs=("conv5",), outputs=("fc0",)),
        _fc("fc0", 256, 512, "flatten", "fc1"), _fc("fc1", 512, 512, "fc0", "fc2"), _fc("fc2", 512, 10, "fc1", None),
    ]


def cnv_plan() -> QuantPlan:
    """Binary weights everywhere, binary activations, the first layer's input 8-bit unsigned (FINN's UINT8
    image), FINN's folding applied with :func:`mixq.hw.estimate.apply_folding`."""
    layers = {n: LayerPlan(Binary(), act=FixedPoint(8, signed=False) if n == "conv0" else Binary(),
                           mapping=HwMapping("lut", 1, 1)) for n in FOLDING}
    return apply_folding(QuantPlan("cnv_w1a1", layers), FOLDING)


def options() -> ArchOptions:
    return ArchOptions(dataflow="finn", fifos=FIFOS)


def _r(x: Resources) -> dict[str, float]:
    return {"lut": round(x.lut, 1), "ff": round(x.ff, 1), "bram36": round(x.bram / 2, 2), "dsp": round(x.dsp, 1)}


def run() -> dict[str, Any]:
    """The estimate, its per-component and per-layer breakdown, and the comparison."""
    specs, plan, opts = cnv_specs(), cnv_plan(), options()
    e = estimate(specs, plan, PART, fold="plan", options=opts)
    p, cm = get_part(PART), CostModel.default()
    design = st.build(lower(specs, plan, p), {}, p, cm, opts)
    comps: dict[str, Resources] = {}
    layers = []
    for ly, en in zip(design.layers, design.engines, strict=True):
        for k, v in en.detail.items():
            key = k if ly.is_compute else ("pool" if ly.spec.kind == "maxpool" else ly.spec.kind)
            comps[key] = comps.get(key, Resources()) + v
        layers.append({"layer": ly.name, "finn": FINN_NAMES.get(ly.name, ""), "pe": en.pe, "simd": en.simd,
                       "cycles": en.cycles, **_r(en.resources),
                       "detail": {k: _r(v) for k, v in en.detail.items()}})
    total = design.resources
    sh = shell(opts)
    assert abs(total.lut + sh.lut - e.resources.lut) < 1e-6  # the breakdown is the estimate's design
    mixq = _r(total)
    finn = {"lut": FINN["lut"], "ff": FINN["ff"], "bram36": FINN_BRAM36, "dsp": FINN["dsp"]}
    ratio = {k: round(mixq[k] / finn[k] - 1, 4) if finn[k] else (0.0 if mixq[k] == 0 else None) for k in finn}
    return {
        "part": PART, "clock_mhz": e.clock_mhz, "fps": round(e.fps, 2), "bottleneck": e.bottleneck,
        "folding": {n: list(f) for n, f in FOLDING.items()}, "fifos": [list(f) for f in FIFOS],
        "mixq": mixq, "finn": finn, "finn_raw": FINN, "issue_quoted": ISSUE_QUOTED, "rel_error": ratio,
        "components": {k: _r(v) for k, v in comps.items()},
        "shell_excluded": _r(sh),
        "finn_dma_note": ("FINN's figure includes its input and output IODMA and the width converters; mixq "
                          f"counts DMA in the shell (reported apart; assumed {opts.dma_lut:g} LUT / "
                          f"{opts.dma_ff:g} FF per AXI master)"),
        "layers": layers, "sources": SOURCES,
    }


def markdown(r: dict[str, Any]) -> str:
    m, f, q = r["mixq"], r["finn"], r["issue_quoted"]
    rows = ["| resource | mixq | FINN (PR #209, excl. shell) | error | issue-quoted |", "|---|---:|---:|---:|---:|"]
    for k, label in (("lut", "LUT"), ("ff", "FF"), ("bram36", "BRAM36"), ("dsp", "DSP")):
        err = r["rel_error"][k]
        rows.append(f"| {label} | {m[k]:,.1f} | {f[k]:,} | {'' if err is None else f'{100 * err:+.1f}%'} | "
                    f"{q[k]:,} |")
    comp = ["| component | LUT | FF | BRAM36 |", "|---|---:|---:|---:|"]
    for k, v in r["components"].items():
        comp.append(f"| {COMPONENTS.get(k, k)} | {v['lut']:,.0f} | {v['ff']:,.0f} | {v['bram36']:g} |")
    s = r["shell_excluded"]
    comp.append(f"| *shell (DMA, AXI; excluded above)* | *{s['lut']:,.0f}* | *{s['ff']:,.0f}* | *{s['bram36']:g}* |")
    lay = ["| layer | FINN node | PE x SIMD | cycles | LUT | FF | BRAM36 |", "|---|---|---|---:|---:|---:|---:|"]
    for ly in r["layers"]:
        lay.append(f"| {ly['layer']} | {ly['finn']} | {ly['pe']} x {ly['simd']} | {ly['cycles']:,} | "
                   f"{ly['lut']:,.0f} | {ly['ff']:,.0f} | {ly['bram36']:g} |")
    src = "\n".join(f"- {k}: {v}" for k, v in r["sources"].items())
    return (f"# CNV-W1A1 at FINN's folding on {r['part']}: mixq vs FINN\n\n"
            f"mixq `estimate(..., fold=\"plan\", options=ArchOptions(dataflow=\"finn\", fifos=...))`; "
            f"{r['fps']:,.0f} FPS at {r['clock_mhz']:g} MHz (bottleneck {r['bottleneck']}).\n\n"
            + "\n".join(rows) + "\n\nFINN's BRAM36 counts its 9 RAMB18 as halves (98 RAMB36 + 9 RAMB18); the "
            "issue's 107 counts them as whole tiles. " + r["finn_dma_note"] + ".\n\n## By component\n\n"
            + "\n".join(comp) + "\n\n## By layer\n\n" + "\n".join(lay) + "\n\n## Sources\n\n" + src + "\n")


def main() -> dict[str, Any]:
    r = run()
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "finn_cnv.json", r)
    md = markdown(r)
    atomic_write_text(RESULTS / "finn_cnv.md", md)
    print(md)
    return r


if __name__ == "__main__":
    main()
