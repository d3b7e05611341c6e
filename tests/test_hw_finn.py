"""FINN-style dataflow pricing (`ArchOptions(dataflow="finn")`, `mixq.hw.dataflow`) and the CNV-W1A1 comparison
with FINN's published post-synthesis figures (`benchmarks/finn_cnv.py`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mixq.errors import HardwareError
from mixq.hw import ArchOptions, estimate
from mixq.hw import dataflow as df
from mixq.hw.memory import VIVADO_BRAM_MIN_BITS, choose_memory, inferred_blocks
from mixq.hw.parts import get_part

Z7020 = get_part("xc7z020")


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "finn_cnv.py"
    spec = importlib.util.spec_from_file_location("finn_cnv_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _bench()


@pytest.fixture(scope="module")
def result(bench: ModuleType) -> dict:
    return bench.run()  # type: ignore[no-any-return]


# --- Vivado's block RAM inference (units: 18-Kb halves) -------------------------------------------------

def test_ug906_non_power_of_two_depth() -> None:
    # UG906 "Optimizing RAMB Utilization when Memory Depth is not a Power of 2": 40K x 36 on 7-series is
    # treated as 64K deep and takes 72 block RAMs (64K x 1, two cascaded RAMB36, 36 times)
    assert inferred_blocks(36, 40 * 1024, Z7020) == 2 * 72


def test_ar61995_rounds_depth_up() -> None:
    # AR# 61995: a non-power-of-2 depth is extended to the next power of two on 7-series
    assert inferred_blocks(32, 18432, Z7020) == inferred_blocks(32, 32768, Z7020) == 2 * 32


def test_ug912_widthwise_decomposition() -> None:
    # UG912 RAM_DECOMP: 2K x 36 is two 2K x 18 blocks side by side (two RAMB36)
    assert inferred_blocks(36, 2048, Z7020) == 2 * 2


def test_ramb36_columns_with_a_ramb18_remainder() -> None:
    # 1024 bits x 36 words: 14 RAMB36 (512 x 72) + 1 RAMB18 (512 x 36) for the last 16 bits
    assert inferred_blocks(1024, 36, Z7020) == 2 * 14 + 1


def test_vivado_style_threshold() -> None:
    # YosysHQ/yosys PR #1533: Vivado infers a RAMB18 from 1024 bits up; smaller RAMs go to LUTRAM
    small = choose_memory(8, VIVADO_BRAM_MIN_BITS // 8 - 1, Z7020, "vivado")
    big = choose_memory(8, VIVADO_BRAM_MIN_BITS // 8, Z7020, "vivado")
    assert small.style == "lutram" and small.bram == 0 and small.lut > 0
    assert big.style == "bram" and big.bram == 1 and big.lut == 0


# --- sliding-window generators and FIFOs ---------------------------------------------------------------

def test_fifo_monotonic_and_positive() -> None:
    assert df.fifo(32, 2) == df.fifo(32, 1) == df.fifo(0, 256) == df.fifo(32, 0)  # none inserted
    prev = df.fifo(32, 3)
    assert prev.lut > 0 and prev.ff > 0
    for d in (4, 33, 64, 100, 256, 1000):
        cur = df.fifo(32, d)
        assert cur.lut >= prev.lut and cur.ff >= prev.ff
        prev = cur
    assert df.fifo(64, 256).lut > df.fifo(32, 256).lut and df.fifo(64, 256).ff > df.fifo(32, 256).ff
    # Q_srl: depth - 1 words in SRLC32Es (one per bit per 32 words) and an output register
    assert df.fifo(32, 257).lut - df.fifo(32, 256).lut < 32 <= df.fifo(32, 258).lut - df.fifo(32, 257).lut


def test_sliding_window_monotonic_and_positive() -> None:
    from mixq.hw.cost import CostModel

    cm = CostModel.default()

    def swg(c: int, w: int, simd: int, a: int = 1, k: int = 3):
        return df.sliding_window((c, w, w), (k, k), (1, 1), simd, a, Z7020, cm)

    assert swg(64, 30, 32) == swg(64, 30, 32)
    assert df.sliding_window((64, 30, 30), (1, 1), (1, 1), 32, 1, Z7020, cm).lut == 0  # 1x1: no window
    base = swg(64, 14, 32)
    assert base.lut > 0 and base.ff > 0 and base.bram == 0  # LUTRAM (FINN's default ram_style)
    assert swg(64, 30, 32).lut >= base.lut  # a wider image: longer rows
    assert swg(128, 14, 32).lut >= base.lut  # more channels
    assert swg(64, 14, 32, a=4).lut > base.lut and swg(64, 14, 32, a=4).ff > base.ff
    assert df.swg_blocks(3, 1) == 4 and df.swg_blocks(2, 2) == 2


def test_regslice_is_two_registers_and_a_select() -> None:
    # Vivado HLS's regslice_both: input skid register and output register of W + 1 bits (valid included);
    # TDATA padded to a byte
    assert df.regslice(32) == df.Resources(lut=33.0, ff=66.0)
    assert df.regslice(5) == df.regslice(8) == df.Resources(lut=9.0, ff=18.0)
    assert df.regslice(0) == df.Resources()


def test_width_converter() -> None:
    assert df.width_converter(32, 32) == df.Resources()  # InsertDWC: none where the widths agree
    up, down = df.width_converter(8, 32), df.width_converter(32, 8)
    assert up == down  # one buffer of the wider word either way
    assert up.ff == 32 + df.DWC_COUNTER_FF + 2 * (8 + 1) + 2 * (32 + 1)
    # widths that are not multiples go through their least common multiple (FINN's IODMA does so)
    assert df.width_converter(64, 24).ff > df.width_converter(64, 32).ff


def test_iodma_interface_width() -> None:
    # InsertIODMA(64): gcd(transfer bits, 64); CNV's input is 3 x 32 x 32 bytes streamed 24 bits a word
    assert df.iodma_width(24, 3 * 32 * 32 * 8) == 64
    assert df.iodma_width(16, 16 * 40) == 64
    assert df.iodma_width(55, 110) == 16  # two words of 55 bits, each padded to 56
    # as measured (a 16-bit stream through a 16-bit interface: five words), nothing added
    assert df.iodma("in", df.IODMA_IN_WIDTH, 5 * df.IODMA_IN_WIDTH) == df.IODMA_IN
    assert df.iodma("out", df.IODMA_OUT_WIDTH, df.IODMA_OUT_WIDTH) == df.IODMA_OUT
    assert df.iodma("in", 24, 3 * 32 * 32 * 8).ff > df.IODMA_IN.ff  # converter 64 -> 192 -> 24 inside


def test_components_against_vivado(bench: ModuleType) -> None:
    """FINN's own IPs synthesized alone by Vivado 2020.1 (benchmarks/finn_cnv.py CHECKS): width converters'
    flip-flops within 15%, weight streamers' block RAM exactly and their data registers priced."""
    for row in bench.vivado_checks():
        m, v = row["mixq"], row["vivado"]
        assert m["bram36"] == v["bram36"], row["ip"]
        if "Converter" in row["ip"]:
            assert abs(m["ff"] / v["ff"] - 1) <= 0.15, row["ip"]
        else:
            # the data registers priced; that build's AXI-Lite weight port (e74913dc has none) is the rest
            assert 0 <= v["ff"] - m["ff"] <= 75, row["ip"]


def test_dataflow_option_checked() -> None:
    with pytest.raises(HardwareError, match="dataflow"):
        ArchOptions(dataflow="hls")


# --- CNV-W1A1 at FINN's folding ------------------------------------------------------------------------

def test_cnv_golden(result: dict) -> None:
    """The benchmark's figures (benchmarks/results/finn_cnv.json)."""
    m = result["mixq"]
    # FINN's HLS register slices, width converters and IODMAs priced (was 15,962.2 / 22,741.9 / 95.5)
    assert m["lut"] == pytest.approx(23226.2, abs=1.0)
    assert m["ff"] == pytest.approx(33309.9, abs=1.0)
    assert m["bram36"] == 96.5
    assert m["dsp"] == 0
    assert result["fps"] == pytest.approx(1e8 / 32768, rel=1e-3)  # fc0 / fc1: 32,768 cycles a frame


@pytest.mark.parametrize("res", ["lut", "ff", "bram36"])
def test_cnv_within_25_percent_of_finn(result: dict, res: str) -> None:
    """Issue 19 item 4, done when: each of LUT, FF, BRAM within 25% of FINN's published figures."""
    assert abs(result["mixq"][res] / result["finn"][res] - 1) <= 0.25
    assert abs(result["mixq"][res] / result["issue_quoted"][res] - 1) <= 0.25


def test_cnv_for_the_right_reasons(result: dict) -> None:
    """The components FINN builds are there: weights in block RAM, thresholds on every layer but the last,
    sliding-window generators on the six convolutions, FIFOs where FINN's depths exceed 2."""
    layers = {ly["layer"]: ly["detail"] for ly in result["layers"]}
    assert result["components"]["weights"]["bram36"] >= 0.9 * result["mixq"]["bram36"]
    assert layers["fc2"]["requant"]["lut"] == 0  # FINN's noActivation on the output layer
    assert all(layers[n]["requant"]["lut"] > 0 for n in ("conv0", "conv1", "fc0", "fc1"))
    assert all(layers[f"conv{i}"]["linebuf"]["lut"] > 0 for i in range(6))
    assert layers["conv5"]["fifo"]["lut"] == 0 and layers["conv1"]["fifo"]["lut"] > 0
    assert result["shell_excluded"]["lut"] > 0  # reported apart
    # every HLS node's ports carry register slices, the weight streams most of them
    assert all(ly["detail"]["axis"]["ff"] > 0 for ly in result["layers"])
    assert result["weights_axis_ff"] > 0.5 * result["components"]["axis"]["ff"]
    # width converters where FINN's InsertDWC puts them: conv0 (PE 16) -> conv1 (SIMD 32), conv1 -> pool0 (64
    # channels a word), pool1 (128) -> conv4 (32); none where the widths agree (fc1 PE 1 -> fc2 SIMD 1)
    assert layers["conv1"]["dwc"]["ff"] > 0 and layers["pool0"]["dwc"]["ff"] > 0 and layers["conv4"]["dwc"]["ff"] > 0
    assert layers["fc2"]["dwc"]["ff"] == 0
    # the two IODMAs, on the layers at the network's input and output, and nowhere else
    assert layers["conv0"]["iodma"]["ff"] > 0 and layers["fc2"]["iodma"]["ff"] > 0
    assert sum(ly["detail"]["iodma"]["ff"] > 0 for ly in result["layers"]) == 2
    # FF would still be within 25% with a Vivado HLS that adds no port register slices
    assert abs(result["ff_without_axis"] / result["finn"]["ff"] - 1) <= 0.25


def test_finn_engine_threshold_units_per_pe(bench: ModuleType) -> None:
    """FINN keeps one threshold unit per PE; mixq's own engines share one over the input fold."""
    specs, plan = bench.cnv_specs(), bench.cnv_plan()
    finn = estimate(specs, plan, "xc7z020", fold="plan", options=bench.options())
    mixq = estimate(specs, plan, "xc7z020", fold="plan", options=ArchOptions(requant="thresh"))
    assert [ly.cycles for ly in finn.layers] == [ly.cycles for ly in mixq.layers]  # same folding, same speed
    assert finn.resources.bram > mixq.resources.bram  # Vivado's placement keeps the weights in block RAM


def test_default_dataflow_unchanged(bench: ModuleType) -> None:
    """The mixq dataflow stays the default and prices none of FINN's components."""
    assert ArchOptions().dataflow == "mixq"
    from mixq.hw import streaming as st
    from mixq.hw.cost import CostModel
    from mixq.hw.lower import lower

    layers = lower(bench.cnv_specs(), bench.cnv_plan(), Z7020)
    d = st.build(layers, {}, Z7020, CostModel.default(), ArchOptions(requant="thresh"))
    assert all(not {"fifo", "inbuf", "axis", "dwc", "iodma"} & set(e.detail) for e in d.engines)
