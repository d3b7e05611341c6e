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
FINN's figure counts its IODMAs and width converters (``post_synth_res`` visits every partition), so the
FINN-mode estimate prices them too; the shell (AXI interconnect, resets) is reported apart and left out of
the compared totals. The per-component prices are checked against Vivado's synthesis of FINN's own IPs
(:data:`CHECKS`).

Writes benchmarks/results/finn_cnv.json and .md. Run: ``.venv/bin/python benchmarks/finn_cnv.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixq.formats import FixedPoint
from mixq.formats.binary import Binary
from mixq.graph.spec import LayerSpec
from mixq.hw import ArchOptions, estimate, finnglue
from mixq.hw import dataflow as df
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
VIVADO_IPS = "umav1511/finn@bd01d87558bb350e47006828ab83d7947d57d700:notebooks/end2end_example/cybersecurity/" \
             "basline-reports (Vivado 2020.1, xc7z020clg400-1)"
SOURCES = {
    "folding": f"Xilinx/finn@{FINN_COMMIT}:tests/end2end/test_zynqbuild_end2end_cnv_w1a1.py "
               "(test_end2end_zynqbuild_cnv_w1a1_fold; same PE/SIMD in "
               "Xilinx/finn-examples:build/bnn-pynq/folding_config/cnv-w1a1_folding_config.json)",
    "figures": "https://github.com/Xilinx/finn/pull/209 (maltanar, 2020-09-05): cnv-w1a1 zynqbuild after the "
               "PR, 'Post-synthesis resources (excluding shell)'",
    "weights": f"Xilinx/finn@{FINN_COMMIT}:src/finn/custom_op/fpgadataflow/streamingfclayer_batch.py "
               "(mem_mode decoupled, ram_style 'auto -- let Vivado decide'); finn-rtllib/memstream",
    "register slices": "Vivado HLS 2020.1 wraps every AXI-Stream port in regslice_both (FINN's generated RTL: "
                       "pgreksic/FINN_Export_AXI_Lite_Missing@1a99d7874ca853c19335e4d8e9865524fb60551a:finn_docker_"
                       "output/code_gen_ipgen_StreamingFCLayer_Batch_1_gj26dggu/project_StreamingFCLayer_Batch_1/"
                       "sol1/impl/ip/hdl/verilog/StreamingFCLayer_Batch_1_StreamingFCLayer_Batch_1.v: in0 16, "
                       "weights 64, out 16 bits); the build's tool: FINN at this commit packages its RTL IP with "
                       f"2020.1 (Xilinx/finn@{FINN_COMMIT}:finn-rtllib/memstream/component.xml, xilinxVersion "
                       "2020.1 since 8eda4b181, 2020-08-01) and documents 2019.1 or 2020.1 "
                       "(docs/finn/getting_started.rst); yosys 0.23 of an equivalent skid buffer: 2W+2 FF",
    "input buffer": "pgreksic/FINN_Export_AXI_Lite_Missing@1a99d787: .../project_StreamingFCLayer_Batch_1/sol1/syn/"
                    "report/Matrix_Vector_Activa_csynth.rpt: 576 registers tmp_V of SIMD*A = 16 bits (9,216 of "
                    "the MVAU's 9,646 FF) = inputBuf[SF]",
    "width converters, IODMAs": f"Xilinx/finn@{FINN_COMMIT}:src/finn/transformation/fpgadataflow/"
                                "make_zynq_proj.py (InsertIODMA(64), InsertDWC), insert_iodma.py (gcd(transfer bits, "
                                "64)), analysis/fpgadataflow/post_synth_res.py (IODMA partitions counted); "
                                "Xilinx/finn-hlslib@cfafe11:streamtools.h (StreamingDataWidthConverter_Batch); "
                                "IODMA figures: " + VIVADO_IPS,
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
    "axis": "HLS AXI-Stream register slices (MVAU in0 / weights / out, window generators, max pools)",
    "dwc": "stream width converters (InsertDWC)",
    "iodma": "IODMAs (input and output, InsertIODMA)",
    "pool": "max pools",
}
#: Vivado 2020.1 post-synthesis of FINN's own IPs on the xc7z020 (umav1511/finn at bd01d875, the cybersecurity
#: MLP's build: notebooks/end2end_example/cybersecurity/basline-reports/vivado_stitch_proj_1m6mliy6/
#: finn_vivado_stitch_proj.runs/*/..._utilization_synth.rpt; widths from the HLS RTL's regslice_both DataWidth in
#: .../synth_out_of_context_ybw78khx/): (IP, what mixq prices it as, its arguments, Vivado's LUT / FF / RAMB36).
#: The IODMA figures of the same runs are used as they are (mixq.hw.dataflow.IODMA_IN / IODMA_OUT).
CHECKS: tuple[tuple[str, str, tuple[int, int], tuple[float, float, float]], ...] = (
    ("StreamingDataWidthConverter_Batch_0", "dwc", (64, 32), (150, 341, 0)),
    ("StreamingDataWidthConverter_Batch_1", "dwc", (8, 32), (62, 190, 0)),
    ("StreamingFCLayer_Batch_0_wstrm (960 b x 80)", "wstrm", (960, 80), (363, 1036, 13.5)),
    ("StreamingFCLayer_Batch_1_wstrm (128 b x 64)", "wstrm", (128, 64), (100, 186, 2)),
    ("StreamingFCLayer_Batch_3_wstrm (8 b x 16)", "wstrm", (8, 16), (43, 55, 0)),
)


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


def vivado_checks() -> list[dict[str, Any]]:
    """mixq's FINN-mode price of FINN IPs that Vivado synthesized alone (:data:`CHECKS`)."""
    p, cm = get_part(PART), CostModel.default()
    rows = []
    for name, kind, args, (lut, ff, bram36) in CHECKS:
        a, b = args
        r = df.width_converter(a, b) if kind == "dwc" else df.weight_streamer(a, b, p, cm)
        rows.append({"ip": name, "mixq": _r(r), "vivado": {"lut": lut, "ff": ff, "bram36": bram36}})
    return rows


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
            glue = k in ("axis", "dwc", "iodma")  # FINN's glue has its own rows, whatever node it sits on
            key = k if ly.is_compute or glue else ("pool" if ly.spec.kind == "maxpool" else ly.spec.kind)
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
        "finn_dma_note": ("FINN's figure includes its input and output IODMA and the width converters, and so "
                          "does mixq's FINN-mode estimate; the shell (AXI interconnect, processor reset) is "
                          "reported apart"),
        "ff_without_axis": round(total.ff - comps.get("axis", Resources()).ff, 1),
        "weights_axis_ff": sum(df.regslice(finnglue.widths(ly, en, p, cm)[1]).ff
                               for ly, en in zip(design.layers, design.engines, strict=True)),
        "vivado_checks": vivado_checks(),
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
    comp.append(f"| *shell (AXI interconnect, resets: mixq's assumption; excluded above)* | *{s['lut']:,.0f}* | "
                f"*{s['ff']:,.0f}* | *{s['bram36']:g}* |")
    lay = ["| layer | FINN node | PE x SIMD | cycles | LUT | FF | BRAM36 |", "|---|---|---|---:|---:|---:|---:|"]
    for ly in r["layers"]:
        lay.append(f"| {ly['layer']} | {ly['finn']} | {ly['pe']} x {ly['simd']} | {ly['cycles']:,} | "
                   f"{ly['lut']:,.0f} | {ly['ff']:,.0f} | {ly['bram36']:g} |")
    chk = ["| FINN IP (Vivado 2020.1, synthesized alone) | mixq LUT | Vivado LUT | mixq FF | Vivado FF | mixq BRAM36 | "
           "Vivado BRAM36 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in r["vivado_checks"]:
        m_, v_ = c["mixq"], c["vivado"]
        chk.append(f"| {c['ip']} | {m_['lut']:,.0f} | {v_['lut']:,.0f} | {m_['ff']:,.0f} | {v_['ff']:,.0f} | "
                   f"{m_['bram36']:g} | {v_['bram36']:g} |")
    src = "\n".join(f"- {k}: {v}" for k, v in r["sources"].items())
    return (f"# CNV-W1A1 at FINN's folding on {r['part']}: mixq vs FINN\n\n"
            f"mixq `estimate(..., fold=\"plan\", options=ArchOptions(dataflow=\"finn\", fifos=...))`; "
            f"{r['fps']:,.0f} FPS at {r['clock_mhz']:g} MHz (bottleneck {r['bottleneck']}).\n\n"
            + "\n".join(rows) + "\n\nFINN's BRAM36 counts its 9 RAMB18 as halves (98 RAMB36 + 9 RAMB18); the "
            "issue's 107 counts them as whole tiles. " + r["finn_dma_note"] + ".\n\n## By component\n\n"
            + "\n".join(comp) + "\n\n" + _why(r) + "\n\n## Components against Vivado\n\n" + "\n".join(chk)
            + "\n\n" + CHECKS_NOTE + "\n\n## By layer\n\n" + "\n".join(lay) + "\n\n## Sources\n\n" + src
            + "\n")


CHECKS_NOTE = ("Source: " + VIVADO_IPS + ". The width converters' FF come within 15% (the HLS loop counters are "
               "priced at 32 bits; Vivado keeps a few more state bits), their LUTs 29-71% high (Vivado's synthesis "
               "report counts a LUT6_2 pair once: 92 LUT cells in the 8 -> 32 converter, 62 LUTs). The weight "
               "streamers' block RAM is Vivado's placement exactly; their data registers are priced (960 of the 1,000 "
               "FDRE at 960 bits); the rest of that build's streamer is its AXI-Lite weight interface "
               "(finn-rtllib/memstream/hdl/axilite_if.v at bd01d875: 36 FDCE and a read-back multiplexer, "
               "MUXF7/F8), which e74913dc's memstream does not have.")


def _why(r: dict[str, Any]) -> str:
    """What moved FF from -27.8% (mixq's RTL PE pricing of the MVAU alone) to the figure above."""
    c = r["components"]
    return (f"Why FF lands where it does: FINN's MVAU keeps its input vector in flip-flops (inputBuf[SF]: "
            f"{c['inbuf']['ff']:,.0f} FF), every port of an HLS node has a register slice "
            f"({c['axis']['ff']:,.0f} FF, of which the weight streams' {r['weights_axis_ff']:,.0f}), the width "
            f"converters and IODMAs FINN inserts and counts add {c['dwc']['ff'] + c['iodma']['ff']:,.0f}. Without the "
            f"register slices of the nodes' ports (the axis row; the converters' own stay) the estimate would hold "
            f"{r['ff_without_axis']:,.0f} FF ({100 * (r['ff_without_axis'] / r['finn']['ff'] - 1):+.1f}%): the "
            "figure for a Vivado HLS that adds none.")



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
