"""Co-simulation of a generated layer engine against the integer engine, in Icarus Verilog.

:func:`cosimulate` writes the engine (:mod:`mixq.rtl.layer`), its memory files and a
testbench into a directory, feeds the layer's input vectors (im2col columns of the
engine's own input codes for the chosen output pixels; one vector for a linear layer),
runs ``iverilog`` + ``vvp`` and compares every output code with the engine's, bit for
bit: every (pixel, row) must come out exactly once and equal the reference.

With ``banks=2`` the engine is the double-buffered one the whole-network accelerator uses
(:func:`mixq.rtl.layer.generate_layer`): the testbench writes the next vector while the
engine computes, holds ``start`` until ``ready`` and never waits for ``busy`` between
vectors; output ``k`` of a row belongs to vector ``k``, and an output of a vector that comes
before the last output of the previous one counts as a mismatch (``interleaved``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixq.errors import HardwareError
from mixq.io import atomic_write_text
from mixq.rtl.layer import LayerRtl, generate_layer
from mixq.rtl.layout import Layout
from mixq.rtl.memfile import mem_text, pack


@dataclass
class CosimResult:
    """Outcome of one co-simulation: counts and the first mismatches (pixel, row, rtl, engine)."""

    layer: str
    pixels: int
    outputs: int
    mismatches: int
    missing: int
    extra: int
    cycles: int
    seconds: float
    first: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.missing == 0 and self.extra == 0 and self.outputs > 0

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "pixels": self.pixels, "outputs": self.outputs, "mismatches": self.mismatches,
                "missing": self.missing, "extra": self.extra, "cycles": self.cycles,
                "seconds": round(self.seconds, 2), "ok": self.ok, "first_mismatches": self.first}


def iverilog_available() -> bool:
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


def default_pixels(lay: Layout, n: int) -> list[tuple[int, int]]:
    """``n`` output pixels spread over the map: corners (padding) first, then evenly spaced (``n <= 0``: all)."""
    d = lay.data
    if d.op == "linear":
        return [(0, 0)]
    ho, wo = int(d.y.shape[2]), int(d.y.shape[3])
    if n <= 0 or n >= ho * wo:
        return [(i, j) for i in range(ho) for j in range(wo)]
    pts = [(0, 0), (ho - 1, wo - 1), (0, wo - 1), (ho - 1, 0)]
    step = max(1, (ho * wo) // max(n, 1))
    pts += [divmod(i, wo) for i in range(step // 2, ho * wo, step)]
    out: list[tuple[int, int]] = []
    for p in pts:
        if p not in out:
            out.append(p)
    return out[:n]


def testbench(rtl: LayerRtl, n_vec: int, in_file: str, out_file: str, banks: int = 1) -> str:
    """The testbench module ``tb``: load each vector, start, wait (``banks=2``: back to back), log every output."""
    nr, rw, qw, iw, words = rtl.nr, rtl.row_bits, rtl.q_bits, rtl.in_width, rtl.in_words
    ia = max(1, (max(words, 1) - 1).bit_length())
    load = ", .wl_we(1'b0), .wl_sel(0), .wl_addr(0), .wl_data(0)" if rtl.load_port else ""
    return f"""`timescale 1ns/1ps
module tb;
  reg clk = 0; always #5 clk = ~clk;
  reg rst = 1, in_we = 0, start = 0;
  reg [{ia - 1}:0] in_addr = 0; reg [{iw - 1}:0] in_data = 0;
  wire busy, ready; wire [{nr - 1}:0] ov; wire [{nr * rw - 1}:0] orow; wire [{nr * qw - 1}:0] oq;
  {rtl.top} dut (.clk(clk), .rst(rst), .in_we(in_we), .in_addr(in_addr), .in_data(in_data), .start(start),
    .busy(busy), .ready(ready), .out_valid(ov), .out_row(orow), .out_q(oq){load});
  reg [{iw - 1}:0] vec [0:{n_vec * words - 1}];
  integer f, p, a, r, cyc;
  initial cyc = 0;
  always @(posedge clk) cyc <= cyc + 1;
  initial begin
    $readmemh("{in_file}", vec);
    f = $fopen("{out_file}", "w");
    p = 0;
    @(negedge clk); @(negedge clk); rst = 0;
    for (p = 0; p < {n_vec}; p = p + 1) begin
      for (a = 0; a < {words}; a = a + 1) begin
        @(negedge clk); in_we = 1; in_addr = a; in_data = vec[p * {words} + a];
      end
      @(negedge clk); in_we = 0; start = 1;
{{wait}}
    end
    while (busy) @(negedge clk);
    $fwrite(f, "cycles %0d\\n", cyc);
    $fclose(f);
    $finish;
  end
  always @(posedge clk) if (!rst)
    for (r = 0; r < {nr}; r = r + 1)
      if (ov[r]) $fwrite(f, "%0d %0d %0d\\n", p, orow[r * {rw} +: {rw}], $signed(oq[r * {qw} +: {qw}]));
endmodule
""".replace("{wait}", "      while (!ready) @(negedge clk);\n      @(negedge clk); start = 0;" if banks == 2 else
           "      @(negedge clk); start = 0;\n      while (busy) @(negedge clk);")


def _run(cmd: list[str], cwd: Path, timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise HardwareError(f"{cmd[0]} failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


def write_sources(rtl: LayerRtl, out_dir: Path) -> list[Path]:
    """Write the engine's Verilog and memory files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_text(out_dir / f"{rtl.top}.v", rtl.verilog)]
    for name, (words, width) in rtl.mems.items():
        paths.append(atomic_write_text(out_dir / name, mem_text(words, width)))
    return paths


def cosimulate(lay: Layout, work_dir: Path, pixels: list[tuple[int, int]] | None = None, batch: int = 0,
               top: str = "layer_top", timeout_s: float = 600.0, banks: int = 1) -> CosimResult:
    """Generate, simulate and compare ``pixels`` (default: 8 spread over the map) of sample ``batch``
    (``banks=2``: the double-buffered engine, vectors back to back)."""
    if not iverilog_available():
        raise HardwareError("iverilog is not installed (Debian: apt-get install iverilog)")
    d = lay.data
    pix = pixels if pixels is not None else default_pixels(lay, 8)
    if d.op == "linear":
        pix = [(0, 0)]
    rtl = generate_layer(lay, top, banks=banks)
    write_sources(rtl, work_dir)
    cols = d.columns(batch, None if d.op == "linear" else pix)  # (n, groups, row_length)
    ref = d.reference(batch, None if d.op == "linear" else pix)  # (n, rows)
    words = []
    for col in cols:
        for grp in col:
            for s in range(lay.fold):
                lanes = [int(grp[s * lay.simd + i]) if s * lay.simd + i < d.row_length else 0 for i in range(lay.simd)]
                words.append(pack(lanes, [lay.abits] * lay.simd))
    atomic_write_text(work_dir / "tb_in.mem", mem_text(words, rtl.in_width))
    atomic_write_text(work_dir / "tb.v", testbench(rtl, len(cols), "tb_in.mem", "tb_out.txt", banks))
    t0 = time.perf_counter()
    _run(["iverilog", "-g2005", "-o", "tb.vvp", "tb.v", f"{top}.v"], work_dir, timeout_s)
    _run(["vvp", "-n", "tb.vvp"], work_dir, timeout_s)
    dt = time.perf_counter() - t0
    got: dict[tuple[int, int], list[int]] = {}
    cycles = 0
    seen: dict[int, int] = {}  # banks=2: outputs so far per row; output k of a row is vector k's
    latest, interleaved = 0, 0
    for line in (work_dir / "tb_out.txt").read_text().splitlines():
        parts = line.split()
        if parts[0] == "cycles":
            cycles = int(parts[1])
            continue
        vec, row = int(parts[0]), int(parts[1])
        if banks == 2:
            vec = seen.get(row, 0)
            seen[row] = vec + 1
            interleaved += vec < latest
            latest = max(latest, vec)
        got.setdefault((vec, row), []).append(int(parts[2]))
    mism, missing, extra = interleaved, 0, 0
    first: list[tuple[int, int, int, int]] = []
    for p in range(len(cols)):
        for r in range(d.rows):
            vals = got.pop((p, r), [])
            if not vals:
                missing += 1
                continue
            extra += len(vals) - 1
            if vals[0] != int(ref[p, r]):
                mism += 1
                if len(first) < 10:
                    first.append((p, r, vals[0], int(ref[p, r])))
    extra += sum(len(v) for v in got.values())
    return CosimResult(d.name, len(cols), int(ref.size), mism, missing, extra, cycles, dt, first)

