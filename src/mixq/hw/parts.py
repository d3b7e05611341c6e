"""FPGA part catalog: programmable-logic resources of the parts mixq targets.

Figures are the vendors' product tables (programmable logic only):

* Zynq-7000 — AMD/Xilinx DS190 "Zynq-7000 SoC Data Sheet: Overview", Table 1
  (XC7Z020: 53,200 LUTs, 106,400 FFs, 140 BRAM36 (4.9 Mb), 220 DSP48E1;
  XC7Z045: 218,600 LUTs, 437,200 FFs, 545 BRAM36 (19.1 Mb), 900 DSP48E1).
* Zynq UltraScale+ — DS891 "Zynq UltraScale+ MPSoC Data Sheet: Overview", Table 1/2
  (XCZU3EG: 70,560 LUTs, 141,120 FFs, 216 BRAM36 (7.6 Mb), 360 DSP48E2;
  XCZU9EG: 274,080 LUTs, 548,160 FFs, 912 BRAM36 (32.1 Mb), 2,520 DSP48E2).
* Virtex UltraScale+ — DS923 "Virtex UltraScale+ FPGA Data Sheet", Table 1
  (XCVU9P: 1,182,240 LUTs, 2,364,480 FFs, 2,160 BRAM36 (75.9 Mb), 960 URAM (270 Mb),
  6,840 DSP48E2).
* Intel Stratix 10 GX/SX — "Intel Stratix 10 GX/SX Device Overview" (683729),
  product tables (GX 2800 / SX 2800: 933,120 ALMs, 3,732,480 ALM registers,
  11,721 M20K (229 Mb), 5,760 variable-precision DSP blocks = 11,520 18x19 multipliers).

Checked against public copies with the project's search tool: the XC7Z020 and
XCVU9P counts matched exactly; the others are as printed in the tables above.

``lut`` of the Intel part counts adaptive LUTs (two per ALM); the LUT costs mixq
fits on 7-series synthesis are applied to them as an approximation (an ALM
holds two 6-input-capable ALUTs). ``bram`` counts the part's native small block
RAM: 18-Kb halves for Xilinx (2 x BRAM36), M20K blocks for Intel.

``clock_mhz`` is an assumed accelerator clock, not a datasheet maximum: typical
published CNN accelerators on these families (100-150 MHz on Zynq-7000 fabric,
200-300 MHz on UltraScale+, ~400 MHz on Stratix 10 with Hyperflex).
``ddr_gbps`` is the off-chip bandwidth of a typical board (GB/s), used only by
the overlay roofline: XC7Z020/Z045: PS DDR3 32-bit at 1066/1333 MT/s; ZU3EG/ZU9EG:
PS DDR4-2400 32/64-bit; VU9P: four DDR4-2400 72-bit channels (AWS F1 / VCU118
class); Stratix 10: four DDR4-2666 channels. Override both per call where known.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from mixq.errors import HardwareError


@dataclass(frozen=True)
class BlockRam:
    """A block-RAM primitive: size and the (width, depth) shapes one block offers."""

    name: str
    bits: int
    shapes: tuple[tuple[int, int], ...]


# 18-Kb half of a RAMB36 (UG473 / UG573): widths with parity; 36-bit wide in simple dual port.
BRAM18 = BlockRam("BRAM18", 18 * 1024, ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512)))
# UltraRAM (UG573): 4K x 72 per block.
URAM288 = BlockRam("URAM288", 288 * 1024, ((72, 4096),))
# Intel M20K (Stratix 10 embedded memory user guide): 20 Kb.
M20K = BlockRam("M20K", 20 * 1024, ((1, 16384), (2, 8192), (5, 4096), (10, 2048), (20, 1024), (40, 512)))


@dataclass(frozen=True)
class Part:
    """Programmable-logic resources of one FPGA part (see the module docstring)."""

    name: str
    family: str
    vendor: str
    lut: int
    ff: int
    dsp: int
    dsp_type: str
    bram: int
    bram_type: BlockRam
    uram: int = 0
    lutram_bits_per_lut: int = 64
    clock_mhz: float = 100.0
    ddr_gbps: float = 4.0
    source: str = ""

    def __post_init__(self) -> None:
        for f in ("clock_mhz", "ddr_gbps"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise HardwareError(f"{f}: must be a finite number > 0, got {v!r} (part {self.name})")
        for f in ("lut", "ff", "dsp", "bram", "uram"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise HardwareError(f"{f}: must be an integer >= 0, got {v!r} (part {self.name})")

    def __hash__(self) -> int:
        """By name (equal parts have equal names): the estimate's caches hash a part on every lookup."""
        return hash(self.name)

    @property
    def bram36(self) -> float:
        """Xilinx 36-Kb blocks (``bram`` counts 18-Kb halves)."""
        return self.bram / 2 if self.bram_type is BRAM18 else 0.0

    @property
    def bram_bits(self) -> int:
        return self.bram * self.bram_type.bits + self.uram * URAM288.bits

    def with_(self, **changes: Any) -> Part:
        """A copy with fields replaced, e.g. ``part.with_(clock_mhz=200)`` (checked like a catalog part:
        a non-finite or non-positive ``clock_mhz`` raises :class:`HardwareError`)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bram_type"] = self.bram_type.name
        d["bram36"] = self.bram36
        d["bram_mbit"] = round(self.bram_bits / 1e6, 2)
        return d


_DS190 = "AMD/Xilinx DS190 Zynq-7000 SoC Data Sheet: Overview, Table 1"
_DS891 = "AMD/Xilinx DS891 Zynq UltraScale+ MPSoC Data Sheet: Overview, Table 2"
_DS923 = "AMD/Xilinx DS923 Virtex UltraScale+ FPGA Data Sheet, Table 1"
_S10 = "Intel Stratix 10 GX/SX Device Overview (683729), GX/SX 2800 column"

PARTS: dict[str, Part] = {
    "xc7z020": Part("xc7z020", "zynq7000", "xilinx", lut=53_200, ff=106_400, dsp=220, dsp_type="DSP48E1",
                    bram=280, bram_type=BRAM18, clock_mhz=100.0, ddr_gbps=4.26, source=_DS190),
    "xc7z045": Part("xc7z045", "zynq7000", "xilinx", lut=218_600, ff=437_200, dsp=900, dsp_type="DSP48E1",
                    bram=1090, bram_type=BRAM18, clock_mhz=150.0, ddr_gbps=5.33, source=_DS190),
    "xczu3eg": Part("xczu3eg", "zynqmp", "xilinx", lut=70_560, ff=141_120, dsp=360, dsp_type="DSP48E2",
                    bram=432, bram_type=BRAM18, clock_mhz=200.0, ddr_gbps=9.6, source=_DS891),
    "xczu9eg": Part("xczu9eg", "zynqmp", "xilinx", lut=274_080, ff=548_160, dsp=2520, dsp_type="DSP48E2",
                    bram=1824, bram_type=BRAM18, clock_mhz=250.0, ddr_gbps=19.2, source=_DS891),
    "xcvu9p": Part("xcvu9p", "virtexup", "xilinx", lut=1_182_240, ff=2_364_480, dsp=6840, dsp_type="DSP48E2",
                   bram=4320, bram_type=BRAM18, uram=960, clock_mhz=300.0, ddr_gbps=76.8, source=_DS923),
    "1sg280": Part("1sg280", "stratix10", "intel", lut=2 * 933_120, ff=3_732_480, dsp=5760,
                   dsp_type="S10-VPDSP", bram=11_721, bram_type=M20K, lutram_bits_per_lut=32,
                   clock_mhz=400.0, ddr_gbps=85.3, source=_S10),
}
ALIASES = {"stratix10": "1sg280", "s10gx2800": "1sg280", "1sx280": "1sg280", "z7020": "xc7z020",
           "z7045": "xc7z045", "zu3eg": "xczu3eg", "zu9eg": "xczu9eg", "vu9p": "xcvu9p"}


def known_parts() -> list[str]:
    return sorted(PARTS)


def get_part(name: str | Part) -> Part:
    """Look a part up by name (case-insensitive, package suffixes like ``-clg400-1`` ignored)."""
    if isinstance(name, Part):
        return name
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PARTS:
        base = key.split("-")[0]
        key = ALIASES.get(base, base)
    if key not in PARTS:
        raise HardwareError(f"unknown FPGA part {name!r}; known parts: {', '.join(known_parts())} "
                            f"(aliases: {', '.join(sorted(ALIASES))})")
    return PARTS[key]
