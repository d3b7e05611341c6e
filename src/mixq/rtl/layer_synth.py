"""Synthesize a generated layer engine with yosys and compare it with the hardware model.

The model's figure is :func:`mixq.hw.units.compute_engine` at the same folding,
without its line buffer (the generated engine takes im2col vectors; the sliding
window is a separate stream operator): compute (dot units) + requantizers + weight
memories + control. The engine is synthesized whole (``synth_xilinx``, DSP inference
on: fixed-point rows and requantizers use DSPs; SP2 shift-add lanes have no multiply).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixq.errors import HardwareError
from mixq.hw.cost import Resources
from mixq.rtl.cosim import write_sources
from mixq.rtl.layer import generate_layer
from mixq.rtl.layout import Layout
from mixq.rtl.synth import SynthResult, parse_stat


@dataclass(frozen=True)
class LayerSynth:
    """Synthesis counts of one layer engine beside the model's prediction."""

    layer: str
    pe: int
    simd: int
    cores: list[dict[str, Any]]
    synth: SynthResult
    model: Resources
    detail: dict[str, Resources]

    @property
    def lut_error(self) -> float:
        """Relative LUT error of the model, ``(model - synth) / synth``."""
        return (self.model.lut - self.synth.lut) / max(self.synth.lut, 1)

    def to_dict(self) -> dict[str, Any]:
        s = self.synth
        return {
            "layer": self.layer, "pe": self.pe, "simd": self.simd, "cores": self.cores,
            "synth": {"lut": s.lut, "ff": s.ff, "carry4": s.carry, "dsp": s.dsp, "bram18": s.bram18,
                      "muxf": sum(n for c, n in s.cells.items() if c.startswith("MUXF")),
                      "seconds": round(s.seconds, 1)},
            "model": {"lut": round(self.model.lut, 1), "ff": round(self.model.ff, 1), "dsp": self.model.dsp,
                      "bram18": self.model.bram},
            "model_detail": {k: {"lut": round(v.lut, 1), "dsp": v.dsp, "bram18": v.bram}
                             for k, v in self.detail.items()},
            "lut_error": round(self.lut_error, 4),
        }


def model_resources(lay: Layout) -> tuple[Resources, dict[str, Resources]]:
    """The model's resources for the engine as generated (everything but the line buffer)."""
    detail = {k: v for k, v in lay.estimate.detail.items() if k != "linebuf"}
    return Resources.total(detail.values()), detail


def synthesize_flat(verilog: Path, top: str, timeout_s: float = 1800.0) -> SynthResult:
    """``synth_xilinx -flatten`` of a multi-module design (``stat`` of the flattened top only).

    :func:`mixq.rtl.synth.synthesize_verilog` keeps the hierarchy, and its ``stat`` then lists
    each module once, not once per instance; a layer engine instantiates its PEs many times.
    """
    exe = shutil.which("yosys")
    if exe is None:
        raise HardwareError("yosys is not installed (Debian: apt-get install yosys)")
    stat = verilog.with_suffix(".stat.txt")
    script = f"read_verilog {verilog}; synth_xilinx -flatten -family xc7 -top {top}; tee -q -o {stat} stat"
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "-q", "-p", script], capture_output=True, text=True, timeout=timeout_s,
                          check=False, cwd=verilog.parent)
    dt = time.perf_counter() - t0
    if proc.returncode != 0 or not stat.exists():
        raise HardwareError(f"yosys failed on {top} (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-2000:]}")
    r = parse_stat(stat.read_text(encoding="utf-8"))
    return SynthResult(r.lut, r.ff, r.dsp, r.bram18, r.carry, r.cells, dt)


def synth_layer(lay: Layout, top: str = "layer_top", timeout_s: float = 1800.0, weights: str = "auto") -> LayerSynth:
    """Generate the engine (``weights``: see :func:`mixq.rtl.layer.generate_layer`), run
    ``yosys synth_xilinx`` on it and pair the counts with the model's."""
    with tempfile.TemporaryDirectory(prefix="mixq-layer-") as tmp:
        rtl = generate_layer(lay, top, mem_dir=tmp, weights=weights)
        write_sources(rtl, Path(tmp))
        res = synthesize_flat(Path(tmp) / f"{top}.v", top, timeout_s)
    model, detail = model_resources(lay)
    cores = [{"kind": c.kind, "wbits": c.wbits, "units": c.units, "rows": int((c.slots >= 0).sum())}
             for c in lay.cores]
    return LayerSynth(lay.data.name, lay.estimate.pe, lay.simd, cores, res, model, detail)
