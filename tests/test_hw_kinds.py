"""The kind tables of the hardware model (`mixq.hw.kinds`) and the registries keyed by them agree."""

from __future__ import annotations

import pytest

from mixq.engine.kernels import SHIFT_ADD_KINDS
from mixq.errors import HardwareError
from mixq.formats import FORMATS, Binary, FixedPoint, Focused, MiniFloat, PowerOfTwo, SumOfPowers, Ternary
from mixq.graph.spec import COMPUTE_KINDS, LayerSpec
from mixq.hw.kinds import COMPUTE_OPS, DOT_KINDS, PE_KINDS, STREAM_OPS, WEIGHT_KINDS
from mixq.hw.lower import pe_kind
from mixq.hw.parts import get_part
from mixq.hw.pe import PeConfig
from mixq.hw.streamops import STREAM_PRICES
from mixq.rtl.layout import SUPPORTED_FORMATS, SUPPORTED_KINDS
from mixq.rtl.pe import EMITTERS, LANES, LUT_ONLY, generate


def test_registries_cover_the_tables() -> None:
    assert set(EMITTERS) == set(PE_KINDS)
    assert set(LANES) == {k for k in DOT_KINDS if not PE_KINDS[k].chain}
    assert set(STREAM_PRICES) == set(STREAM_OPS)
    assert set(WEIGHT_KINDS) == set(FORMATS)
    assert set(COMPUTE_OPS) == set(COMPUTE_KINDS)
    assert DOT_KINDS == ("fixed_lut", "fixed_dsp", "fixed_dsp2", "sp2", "pot", "ternary", "xnor")


def test_derived_kind_sets() -> None:
    assert sorted(LUT_ONLY) == ["acc", "fixed_lut", "pot", "ram", "sp2", "ternary", "thresh", "tree", "xnor"]
    assert SUPPORTED_KINDS == ("fixed_lut", "fixed_dsp", "fixed_dsp2", "sp2", "pot", "ternary", "xnor")
    assert SUPPORTED_FORMATS == ("fixed", "sp2", "pot", "ternary", "binary")
    assert set(SHIFT_ADD_KINDS) == {"sp2", "pot", "binary", "ternary"}


TERNARY_NOTE = "binary weights with multi-bit activations modelled as ternary selects"
SPEC = LayerSpec("c", "conv", (64, 8, 8), (64, 8, 8), 64, 64, (3, 3), macs=64 * 64 * 9 * 64)
DW = LayerSpec("d", "dwconv", (64, 8, 8), (64, 8, 8), 64, 64, (3, 3), groups=64, macs=64 * 9 * 64)


@pytest.mark.parametrize(("fmt", "core", "spec", "abits", "want"), [
    (FixedPoint(4), "auto", SPEC, 4, ("fixed_dsp2", 4, "")),
    (FixedPoint(4), "auto", DW, 4, ("fixed_dsp", 4, "")),
    (FixedPoint(8), "dsp", SPEC, 8, ("fixed_dsp", 8, "")),
    (FixedPoint(4), "lut", SPEC, 4, ("fixed_lut", 4, "")),
    (SumOfPowers(4), "auto", SPEC, 4, ("sp2", 4, "")),
    (SumOfPowers(5, terms=3), "lut", SPEC, 4, ("fixed_lut", 5, "sp2 weights modelled as a 5-bit fixed-point multiply")),
    (PowerOfTwo(3), "auto", SPEC, 4, ("pot", 3, "")),
    (Focused(4, (-0.5, 0.5), (0.25, 0.25)), "auto", SPEC, 4, ("pot", 4, "")),
    (Ternary(), "auto", SPEC, 4, ("ternary", 2, "")),
    (Binary(), "auto", SPEC, 1, ("xnor", 1, "")),
    (Binary(), "auto", SPEC, 4, ("ternary", 2, TERNARY_NOTE)),
    (MiniFloat(4, 3), "lut", SPEC, 8, ("fixed_lut", 8, "minifloat weights modelled as a 8-bit fixed-point multiply")),
    (None, "auto", SPEC, 8, ("fixed_dsp", 8, "")),
])
def test_pe_kind_of_each_format(fmt: object, core: str, spec: LayerSpec, abits: int,
                                want: tuple[str, int, str]) -> None:
    wbits = int(getattr(fmt, "storage_bits", 8))
    assert pe_kind(fmt, core, None, spec, get_part("xc7z020"), wbits, abits, False) == want


def test_fixed_width_lanes_refuse_other_widths() -> None:
    with pytest.raises(HardwareError, match="ternary weights take 2 bit"):
        generate(PeConfig("ternary", 3, 4, 2))
    with pytest.raises(HardwareError, match="xnor activations take 1 bit"):
        generate(PeConfig("xnor", 1, 4, 2))
    with pytest.raises(HardwareError, match="PE kind 'nope' is unknown"):
        PeConfig("nope")
