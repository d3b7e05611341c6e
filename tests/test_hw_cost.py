"""The PE cost model against stored yosys results (golden file, refreshed by `mixq calibrate-hw`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixq.hw.cost import CostModel, Resources
from mixq.hw.fit import LUT_TARGET, evaluate, fit, markdown_table, max_error
from mixq.hw.memory import block_count, choose_memory
from mixq.hw.parts import BRAM18, get_part
from mixq.hw.pe import PeConfig, dsp_packing, mul_dsps

GOLDEN = Path(__file__).parent / "golden" / "hw" / "synth_records.json"


@pytest.fixture(scope="module")
def records() -> list[dict[str, object]]:
    return json.loads(GOLDEN.read_text())["records"]  # type: ignore[no-any-return]


def test_every_swept_pe_within_target(records: list[dict[str, object]]) -> None:
    rows = evaluate(CostModel.default(), records)
    assert len(rows) >= 100
    bad = [(r.name, r.measured["lut"], r.predicted["lut"]) for r in rows if r.lut_err > LUT_TARGET]
    assert not bad, f"LUT error above {LUT_TARGET:.0%}: {bad}"
    assert max_error(rows) <= LUT_TARGET


def test_dsp_and_bram_counts_are_exact(records: list[dict[str, object]]) -> None:
    rows = evaluate(CostModel.default(), records)
    bad = [(r.name, r.measured, r.predicted) for r in rows if not r.dsp_ok]
    assert not bad


def test_shipped_coefficients_are_the_fit_of_the_golden_records(records: list[dict[str, object]]) -> None:
    """`mixq calibrate-hw` wrote both: re-fitting the golden records reproduces the shipped model."""
    refit = CostModel(fit(records))
    shipped = CostModel.default()
    for r in records:
        cfg = PeConfig.from_dict(r["pe"])  # type: ignore[arg-type]
        assert refit.pe(cfg).lut == pytest.approx(shipped.pe(cfg).lut, rel=0.02, abs=1.0)


def test_calibration_table_lists_every_pe(records: list[dict[str, object]]) -> None:
    rows = evaluate(CostModel.default(), records)
    md = markdown_table(rows)
    assert md.count("\n| ") >= len(rows)
    assert "Worst LUT error" in md


def test_costs_grow_with_lanes_and_bits() -> None:
    m = CostModel.default()
    for kind, w in (("fixed_lut", 4), ("sp2", 4), ("pot", 4), ("ternary", 2)):
        luts = [m.pe(PeConfig(kind, w, 4, s, acc_len=256)).lut for s in (1, 2, 4, 8, 16, 32)]
        assert luts == sorted(luts), kind
        assert m.pe(PeConfig(kind, w, 8, 8)).lut > m.pe(PeConfig(kind, w, 4, 8)).lut
    # SP2 shift-add lanes (the sign in the adder tree) beat LUT multipliers, 4x4 included
    for w, a in ((4, 4), (4, 8), (5, 8), (6, 8)):
        assert m.pe(PeConfig("sp2", w, a, 16)).lut < m.pe(PeConfig("fixed_lut", w, a, 16)).lut


def test_carry_chains_are_predicted(records: list[dict[str, object]]) -> None:
    """CARRY4 per kind (fitted like LUTs): within 30% wherever yosys used 10 or more (worst: thresholds)."""
    m = CostModel.default()
    rows = [r for r in evaluate(m, records) if r.measured["carry"] >= 10]
    assert rows and all(abs(r.predicted["carry"] - r.measured["carry"]) <= 0.3 * r.measured["carry"] for r in rows)
    assert m.carry(PeConfig("sp2", 4, 4, 16)) > m.carry(PeConfig("sp2", 4, 4, 4)) > 0


def test_dsp_rules() -> None:
    assert mul_dsps(4, 5, 8) == 0  # a 4x4 product stays in LUTs (< 9 bits)
    assert mul_dsps(2, 9) == 1  # a 2x8 takes a whole DSP
    m = CostModel.default()
    # the yosys rule on the product's own width, not the accumulator's: signed 4x4 is 8 bits (LUTs),
    # 4 x unsigned 4 (a 5-bit signed operand) 9 bits (a DSP), 2 x unsigned 4 7 bits (LUTs)
    assert m.pe(PeConfig("fixed_dsp", 4, 4, 1, acc_len=4096, signed_act=True)).dsp == 0
    assert m.pe(PeConfig("fixed_dsp", 4, 4, 1, acc_len=4096)).dsp == 1
    assert m.pe(PeConfig("fixed_dsp", 8, 8, 4, acc_len=64, signed_act=True)).dsp == 4
    assert m.pe(PeConfig("fixed_dsp", 2, 4, 16, acc_len=4096)).dsp == 0
    assert m.pe(PeConfig("fixed_dsp", 4, 4, 16, acc_len=4096, signed_act=True)).lut > 16 * 20  # ... in LUTs
    # one DSP lane is a whole multiply-accumulate: the accumulator lives in the DSP's P register
    assert m.pe(PeConfig("fixed_dsp", 8, 8, 1, acc_len=4096)).lut < 5
    assert mul_dsps(24, 17) == 1 and mul_dsps(32, 17) == 2
    # ResNet-18's longest row packs at 4 bits only with narrow weights: w_hi = -8 and w_lo < 0 need one more bit
    assert dsp_packing("DSP48E1", 4, 4, 4608) == 1 and dsp_packing("DSP48E1", 4, 4, 4608, narrow=True) == 2
    assert dsp_packing("DSP48E1", 8, 8, 16) == 1  # 8-bit does not fit two fields in 25 bits
    assert dsp_packing("DSP48E2", 6, 6, 16) == 2
    m = CostModel.default()
    assert m.pe(PeConfig("fixed_dsp2", 4, 4, 16, acc_len=512)).dsp == 16
    assert m.pe(PeConfig("fixed_dsp", 4, 4, 16, acc_len=512), "S10-VPDSP").dsp == 8  # two 18x19 per block


def test_block_ram_shapes() -> None:
    assert block_count(16, 1024, BRAM18) == 1
    assert block_count(36, 512, BRAM18) == 1
    assert block_count(72, 512, BRAM18) == 2
    assert block_count(8, 4096, BRAM18) == 2
    assert block_count(4, 16384, BRAM18) == 4
    z = get_part("xc7z020")
    assert choose_memory(8, 16, z).style == "lutram"
    assert choose_memory(36, 16384, z).style == "bram"
    assert choose_memory(72, 40000, get_part("xcvu9p")).style in ("uram", "bram")


def test_resources_arithmetic() -> None:
    r = Resources(10, 20, 1, 2) + Resources(lut=5) * 2
    assert r == Resources(20, 20, 1, 2, 0)
    assert r.fits(Resources(20, 20, 1, 2)) and not r.fits(Resources(19, 20, 1, 2))
    assert Resources.total([r, r]).lut == 40
