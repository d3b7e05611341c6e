"""The part catalog: datasheet figures and lookup."""

from __future__ import annotations

import pytest

from mixq.errors import HardwareError
from mixq.hw.parts import PARTS, get_part, known_parts


@pytest.mark.parametrize("name,lut,ff,dsp,bram36", [
    ("xc7z020", 53_200, 106_400, 220, 140),
    ("xc7z045", 218_600, 437_200, 900, 545),
    ("xczu3eg", 70_560, 141_120, 360, 216),
    ("xczu9eg", 274_080, 548_160, 2_520, 912),
    ("xcvu9p", 1_182_240, 2_364_480, 6_840, 2_160),
])
def test_xilinx_datasheet_figures(name: str, lut: int, ff: int, dsp: int, bram36: int) -> None:
    p = get_part(name)
    assert (p.lut, p.ff, p.dsp, p.bram36) == (lut, ff, dsp, bram36)
    assert p.source.startswith("AMD/Xilinx DS")


def test_other_resources() -> None:
    assert get_part("xcvu9p").uram == 960
    assert get_part("xc7z020").dsp_type == "DSP48E1" and get_part("xczu9eg").dsp_type == "DSP48E2"
    s10 = get_part("stratix10")
    assert s10.vendor == "intel" and s10.dsp == 5_760 and s10.bram == 11_721 and s10.bram_type.name == "M20K"
    assert round(get_part("xc7z020").bram_bits / 1e6, 1) == 5.2  # 140 x 36 Kb (DS190's "4.9 Mb" is Mi)


def test_lookup_and_errors() -> None:
    assert get_part("XC7Z020-1CLG400C").name == "xc7z020"
    assert get_part("zu3eg") is PARTS["xczu3eg"]
    with pytest.raises(HardwareError, match="known parts: 1sg280, xc7z020"):
        get_part("xc7a35t")
    assert len(known_parts()) >= 6
    assert get_part("xc7z020").with_(clock_mhz=200).clock_mhz == 200
