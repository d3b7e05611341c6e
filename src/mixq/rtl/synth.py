"""Run ``yosys synth_xilinx`` on generated Verilog and parse its ``stat`` report.

Counts follow the 7-series primitives yosys maps to. ``lut`` counts LUT sites:
LUT1..LUT6, shift registers (SRL16E/SRLC32E) and LUTRAM primitives weighted by the
LUTs they occupy; ``ff`` the flip-flops; ``dsp`` DSP48E1/E2; ``bram18`` block RAM in
18-Kb halves (a RAMB36 counts two); ``carry`` CARRY4/CARRY8 (not counted in ``lut``).

With ``timing``, ``arrival_ps`` is the longest register-to-register (or port) path yosys' ``sta``
finds in the mapped netlist, from the ``specify`` delays of yosys' own 7-series cell library
(``+/xilinx/cells_sim.v``: Project X-Ray's Artix-7 figures): logic delay only, no routing — a
measure to compare circuits by, and a lower bound on the clock period.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixq.errors import HardwareError
from mixq.hw.pe import PeConfig
from mixq.rtl.pe import generate, uses_nodsp

# LUT sites each primitive occupies.
LUT_SITES = {
    "INV": 1, "LUT1": 1, "LUT2": 1, "LUT3": 1, "LUT4": 1, "LUT5": 1, "LUT6": 1,
    "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
    "RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
    "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4,
    "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8,
}
FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE")
DSP_CELLS = ("DSP48E1", "DSP48E2")
_CELL_LINE = re.compile(r"^\s+([A-Za-z_][A-Za-z0-9_$]*)\s+(\d+)\s*$")
_ARRIVAL = re.compile(r"Latest arrival time in '[^']*' is (\d+)")


@dataclass(frozen=True)
class SynthResult:
    """Resource counts of one synthesized module (see the module docstring)."""

    lut: int
    ff: int
    dsp: int
    bram18: int
    carry: int
    cells: dict[str, int]
    seconds: float = 0.0
    arrival_ps: int | None = None  # the longest path (``timing``; see the module docstring)

    def to_dict(self) -> dict[str, Any]:
        out = {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram18": self.bram18,
               "carry": self.carry, "cells": dict(sorted(self.cells.items())),
               "seconds": round(self.seconds, 2)}
        if self.arrival_ps is not None:
            out["arrival_ps"] = self.arrival_ps
        return out


def parse_stat(text: str) -> SynthResult:
    """Parse the cell table of a yosys ``stat`` report into a `SynthResult`."""
    cells: dict[str, int] = {}
    for line in text.splitlines():
        m = _CELL_LINE.match(line)
        if m and not line.strip().lower().startswith("number"):
            cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
    return SynthResult(
        lut=sum(n * LUT_SITES[c] for c, n in cells.items() if c in LUT_SITES),
        ff=sum(cells.get(c, 0) for c in FF_CELLS),
        dsp=sum(cells.get(c, 0) for c in DSP_CELLS),
        bram18=cells.get("RAMB18E1", 0) + cells.get("RAMB18E2", 0)
        + 2 * (cells.get("RAMB36E1", 0) + cells.get("RAMB36E2", 0)),
        carry=cells.get("CARRY4", 0) + cells.get("CARRY8", 0),
        cells=cells,
    )


def yosys_available() -> bool:
    return shutil.which("yosys") is not None


def parse_arrival(text: str) -> int:
    """The longest path (ps) of a yosys ``sta`` report."""
    m = _ARRIVAL.search(text)
    if m is None:
        raise HardwareError("yosys sta: no arrival time in its report")
    return int(m.group(1))


def synthesize_verilog(source: str, top: str, *, nodsp: bool = False, family: str = "xc7",
                       timeout_s: float = 600.0, timing: bool = False) -> SynthResult:
    """Synthesize ``source`` (top module ``top``) with ``synth_xilinx`` and return its counts
    (``timing``: and its longest path, ``arrival_ps``; 7-series only)."""
    exe = shutil.which("yosys")
    if exe is None:
        raise HardwareError("yosys is not installed (Debian: apt-get install yosys)")
    opts = f"-family {family} -top {top}" + (" -nodsp" if nodsp else "")
    with tempfile.TemporaryDirectory(prefix="mixq-synth-") as tmp:
        v = Path(tmp) / f"{top}.v"
        stat = Path(tmp) / "stat.txt"
        v.write_text(source, encoding="utf-8")
        sta = Path(tmp) / "sta.txt"
        script = f"read_verilog {v}; synth_xilinx {opts}; tee -q -o {stat} stat"
        if timing:  # the cell library's specify delays, then static timing on the mapped netlist
            script += f"; read_verilog -lib -specify +/xilinx/cells_sim.v; tee -q -o {sta} sta"
        t0 = time.perf_counter()
        proc = subprocess.run([exe, "-q", "-p", script], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        dt = time.perf_counter() - t0
        if proc.returncode != 0 or not stat.exists():
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise HardwareError(f"yosys failed on {top} (exit {proc.returncode}):\n{tail}")
        res = parse_stat(stat.read_text(encoding="utf-8"))
        arrival = parse_arrival(sta.read_text(encoding="utf-8")) if timing else None
    return SynthResult(res.lut, res.ff, res.dsp, res.bram18, res.carry, res.cells, dt, arrival)


def synthesize_pe(cfg: PeConfig, family: str = "xc7") -> SynthResult:
    """Generate and synthesize one PE (LUT-only kinds with ``-nodsp``)."""
    return synthesize_verilog(generate(cfg), cfg.name, nodsp=uses_nodsp(cfg), family=family)
