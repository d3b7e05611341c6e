"""Whole-network simulation of :mod:`mixq.rtl.network` in Verilator (fast) or Icarus (reference).

:func:`write_build` writes the design (``files.f`` lists it), its memory images, the input
stream of ``N`` images (``tb_in.mem``), the testbench and a README into a folder;
:func:`simulate` compiles and runs it and :func:`compare` checks every output element
against the integer engine's.

The testbench ``tb`` (plain Verilog, clocked by its ``clk`` input; ``tb_icarus`` wraps it
with a clock for Icarus, ``tb_main.cpp`` toggles it for Verilator) streams the images
through ``s_axis`` and logs every ``m_axis`` beat (cycle, code, tlast) and, per layer and
frame, the cycle its window sequencer started the frame and the first cycle it could start
the next one (``layer I START END``: ``END - START`` is the layer's own cycles per frame,
whatever its neighbours do). It randomizes
``s_axis_tvalid`` (a beat is offered with probability ``+valid=P/256``, and held until
taken, as AXI4-Stream requires) and ``m_axis_tready`` (high with probability
``+ready=P/256``), from xorshift32 generators seeded by ``+seed=S``, so both simulators
see the same stimulus cycle for cycle; ``+valid=256 +ready=256`` streams at full rate.
After the expected number of beats it keeps running ``TAIL`` cycles so an extra beat would
be logged, then writes ``end CYCLE BEATS`` and stops (``timeout`` after ``+maxcycles``).

No cocotb: it is not installed here, and a plain Verilog testbench needs no extra
package, runs unchanged in both simulators, and costs no Python per cycle (Verilator
runs the whole stream natively).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixq.errors import HardwareError
from mixq.io import atomic_write_text
from mixq.rtl.memfile import mem_text
from mixq.rtl.network import NetworkRtl

SIMULATORS = ("verilator", "icarus")
TAIL = 2000

TB = """`timescale 1ns/1ps
// mixq whole-network testbench (mixq.rtl.netsim): N images in through s_axis, every m_axis beat logged
module tb (input clk);
  localparam NIMG = {nimg}, NPIX = {npix}, NOUT = {nout};
  reg [{iw1}:0] img [0:NIMG * NPIX - 1];
  reg rst;
  reg [31:0] cyc, seed, pv, pr, maxc, hold, ra, rb, idx, nout, tail, first_in, stalls, nimg, TOTAL_IN, TOTAL_OUT;
  reg [{iw1}:0] s_tdata; reg s_tvalid, s_tlast, m_tready;
  wire s_tready, m_tvalid, m_tlast; wire [{ow1}:0] m_tdata;
  integer f;
  {top} dut (.clk(clk), .rst(rst), .s_axis_tdata(s_tdata), .s_axis_tvalid(s_tvalid), .s_axis_tready(s_tready),
    .s_axis_tlast(s_tlast), .m_axis_tdata(m_tdata), .m_axis_tvalid(m_tvalid), .m_axis_tlast(m_tlast),
    .m_axis_tready(m_tready));
  function [31:0] xs(input [31:0] x);
    reg [31:0] y;
    begin y = x ^ (x << 13); y = y ^ (y >> 17); xs = y ^ (y << 5); end
  endfunction
  initial begin
    $readmemh("tb_in.mem", img);
    if (!$value$plusargs("seed=%d", seed)) seed = 1;
    if (!$value$plusargs("valid=%d", pv)) pv = 256;
    if (!$value$plusargs("ready=%d", pr)) pr = 256;
    if (!$value$plusargs("maxcycles=%d", maxc)) maxc = 100000000;
    if (!$value$plusargs("hold=%d", hold)) hold = 0;
    if (!$value$plusargs("images=%d", nimg) || nimg > NIMG) nimg = NIMG;
    TOTAL_IN = nimg * NPIX; TOTAL_OUT = nimg * NOUT;
    ra = (seed * 32'd2654435761) ^ 32'h2545F491; if (ra == 0) ra = 1;
    rb = (seed * 32'd1597334677) ^ 32'h9E3779B9; if (rb == 0) rb = 2;
    f = $fopen("tb_out.txt", "w");
    rst = 1; cyc = 0; idx = 0; nout = 0; tail = 0; first_in = 0; stalls = 0;
    s_tvalid = 0; s_tlast = 0; s_tdata = 0; m_tready = 0;
  end
  reg [31:0] nxt;
  always @(posedge clk) begin
    cyc <= cyc + 1;
    ra <= xs(ra); rb <= xs(rb);
    if (cyc == 4) rst <= 0;
    if (!rst) begin
      nxt = (s_tvalid && s_tready) ? idx + 1 : idx;
      if (s_tvalid && s_tready && idx == 0) first_in <= cyc;
      idx <= nxt;
      if (!s_tvalid || s_tready) begin
        if (nxt < TOTAL_IN && {{24'd0, ra[7:0]}} < pv) begin
          s_tvalid <= 1; s_tdata <= img[nxt]; s_tlast <= (nxt % NPIX) == NPIX - 1;
        end else s_tvalid <= 0;
      end
      m_tready <= cyc + 1 >= hold && {{24'd0, rb[7:0]}} < pr;
      if (s_tvalid && !s_tready) stalls <= stalls + 1;
      if (m_tvalid && m_tready) begin
        $fwrite(f, "%0d %0d %0d\\n", cyc, $signed(m_tdata), m_tlast);
        nout <= nout + 1;
      end
      if (nout >= TOTAL_OUT) tail <= tail + 1;
      if (tail == {tail_n} || cyc >= maxc) begin
        if (cyc >= maxc) $fwrite(f, "timeout %0d %0d\\n", cyc, nout);
        $fwrite(f, "end %0d %0d %0d %0d\\n", cyc, nout, first_in, stalls);
        $fclose(f);
        $finish;
      end
    end
  end
{probes}endmodule
"""

# per layer: the cycle its window sequencer decides to start a frame and the first cycle it could start the next,
# less the cycles its row gate held it (waiting for input rows of a ring buffer or a row of its output ring)
PROBE = """  reg la{i}; reg [31:0] ls{i}, lw{i};
  always @(posedge clk) begin
    la{i} <= dut.l{i}_win.active;
    if (!rst && dut.l{i}_win.active && !la{i}) begin ls{i} <= cyc - 1; lw{i} <= 0; end
    else if (dut.l{i}_win.g_on && dut.l{i}_win.row_first && !dut.l{i}_win.gate_ok) lw{i} <= lw{i} + 1;
    if (!rst && dut.l{i}_end) $fwrite(f, "layer %0d %0d %0d\\n", {i}, ls{i}, cyc + 1 - lw{i});
  end
"""

TB_ICARUS = """`timescale 1ns/1ps
module tb_icarus;
  reg clk = 0;
  always #5 clk = ~clk;
  tb tb (.clk(clk));
endmodule
"""

TB_MAIN = """// Verilator driver of the mixq testbench: toggles tb.clk until $finish
#include <memory>
#include "Vtb.h"
#include "verilated.h"

int main(int argc, char** argv) {
    const std::unique_ptr<VerilatedContext> ctx{new VerilatedContext};
    ctx->commandArgs(argc, argv);
    const std::unique_ptr<Vtb> top{new Vtb{ctx.get()}};
    top->clk = 0;
    while (!ctx->gotFinish()) {
        top->clk = !top->clk;
        top->eval();
        ctx->timeInc(1);
    }
    top->final();
    return 0;
}
"""

README = """# {top}: whole-network accelerator of {model}

Generated by `mixq rtl build` (mixq.rtl.network). Layers (pe, simd): {layers}.

* `files.f` lists the design's Verilog ({n_files} files, top `{top}`); the `*.mem` files are the
  weight and requantizer memories (`$readmemh`, read from the working directory).
* Ports: `clk`, `rst` (synchronous, active high); AXI4-Stream in `s_axis_tdata[{iw1}:0]` (one input
  pixel per beat: the {in_c} codes of the first quantizer, {in_b} bits each, channel 0 in the low bits;
  {npix} beats per frame, raster order), `s_axis_tvalid`, `s_axis_tready`, `s_axis_tlast` (not needed);
  AXI4-Stream out `m_axis_tdata[{ow1}:0]` (one output code per beat, sign-extended; {nout} per frame),
  `m_axis_tvalid`, `m_axis_tready` (backpressure), `m_axis_tlast` (last code of a frame).
* Testbench: `tb.v` (clocked by its `clk` input), `tb_icarus.v` (clock for Icarus), `tb_main.cpp`
  (Verilator driver); `tb_in.mem` holds {nimg} images, `tb_expected.txt` the integer engine's output
  codes in stream order (one per line); plusargs `+seed=S +valid=P +ready=P +hold=C +images=N` (probability P/256
  of offering an input beat / of `m_axis_tready`, 256 = full rate; `m_axis_tready` low for the first C
  cycles, so the whole pipeline backs up to the input; the first N images only).

Verilator (fast):

    verilator --cc --exe --build -j 2 -Wno-fatal -Wno-lint -Wno-style --top-module tb -o tb_sim \\
        tb.v -f files.f tb_main.cpp
    ./obj_dir/tb_sim +seed=1 +valid=192 +ready=128

Icarus (reference):

    iverilog -g2005 -o tb.vvp -s tb_icarus tb_icarus.v tb.v -f files.f
    vvp -n tb.vvp +seed=1 +valid=192 +ready=128

`tb_out.txt` gets one line per output beat (`cycle code tlast`) and
`end CYCLE BEATS FIRST_INPUT_CYCLE INPUT_STALL_CYCLES`.
`build.json` holds the comparison with the integer engine and the cycles per frame.
"""


@dataclass
class SimResult:
    """One whole-network simulation compared with the integer engine, element by element."""

    simulator: str
    images: int
    elements: int  # expected output elements
    received: int
    mismatches: int
    missing: int
    extra: int
    bad_tlast: int
    timeout: bool
    input_stalls: int  # cycles s_axis_tvalid was high and s_axis_tready low
    cycles: int
    frame_end_cycles: list[int]
    first_input_cycle: int
    compile_seconds: float
    run_seconds: float
    seed: int
    valid: int
    ready: int
    hold: int
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first: list[tuple[int, int, int, int]] = field(default_factory=list)  # (image, element, rtl, engine)
    layer_frames: list[list[tuple[int, int]]] = field(default_factory=list)  # per layer: (start, end) per frame

    @property
    def layer_cycles(self) -> list[float]:
        """Per layer, its mean cycles per frame (frame start to the first cycle it could start the next)."""
        return [sum(e - s for s, e in fr) / len(fr) if fr else 0.0 for fr in self.layer_frames]

    @property
    def ok(self) -> bool:
        return (self.mismatches == 0 and self.missing == 0 and self.extra == 0 and self.bad_tlast == 0
                and not self.timeout and self.elements > 0)

    @property
    def latency_cycles(self) -> int:
        """Cycles from the first input beat to the first frame's last output beat."""
        return self.frame_end_cycles[0] - self.first_input_cycle if self.frame_end_cycles else 0

    @property
    def interval_cycles(self) -> float:
        """Mean cycles between consecutive frames' last output beats (0 with one frame)."""
        e = self.frame_end_cycles
        return (e[-1] - e[0]) / (len(e) - 1) if len(e) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"simulator": self.simulator, "images": self.images, "elements": self.elements,
                "received": self.received, "mismatches": self.mismatches, "missing": self.missing,
                "extra": self.extra, "bad_tlast": self.bad_tlast, "timeout": self.timeout, "ok": self.ok,
                "cycles": self.cycles, "latency_cycles": self.latency_cycles,
                "interval_cycles": round(self.interval_cycles, 1), "seed": self.seed,
                "valid_prob": self.valid / 256, "ready_prob": self.ready / 256, "ready_hold_cycles": self.hold,
                "input_stall_cycles": self.input_stalls,
                "layer_cycles_per_frame": [round(c, 1) for c in self.layer_cycles],
                "compile_seconds": round(self.compile_seconds, 2), "run_seconds": round(self.run_seconds, 2),
                "first_mismatches": self.first}


def available(simulator: str) -> bool:
    """Whether ``simulator`` (verilator | icarus) and its tools are on the PATH."""
    tools = {"verilator": ("verilator", "make"), "icarus": ("iverilog", "vvp")}[simulator]
    return all(shutil.which(t) is not None for t in tools)


def write_build(net: NetworkRtl, out_dir: Path, codes: np.ndarray, reference: np.ndarray | None = None,
                model: str = "") -> list[Path]:
    """Write the design, memories, ``files.f``, the testbench for the input ``codes`` (N, C, H, W), the expected
    output ``reference`` (N, elements in stream order) as ``tb_expected.txt``, and a README."""
    from mixq.rtl.network import input_words

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_text(out_dir / f, text) for f, text in net.files.items()]
    for f, (words, width) in net.mems.items():
        paths.append(atomic_write_text(out_dir / f, mem_text(words, width)))
    paths.append(atomic_write_text(out_dir / "files.f", "\n".join(net.sources) + "\n"))
    words = input_words(net, codes)
    nimg = len(words) // net.in_pixels
    paths.append(atomic_write_text(out_dir / "tb_in.mem", mem_text(words, net.in_width)))
    paths.append(atomic_write_text(out_dir / "tb.v", TB.format(
        nimg=nimg, npix=net.in_pixels, nout=net.out_elems, iw1=net.in_width - 1, ow1=net.out_width - 1,
        top=net.top, tail_n=TAIL, probes="".join(PROBE.format(i=i) for i in range(len(net.stages))))))
    if reference is not None:
        paths.append(atomic_write_text(out_dir / "tb_expected.txt",
                                       "".join(f"{int(v)}\n" for v in np.asarray(reference).reshape(-1))))
    paths.append(atomic_write_text(out_dir / "tb_icarus.v", TB_ICARUS))
    paths.append(atomic_write_text(out_dir / "tb_main.cpp", TB_MAIN))
    s0 = net.stages[0]
    layers = ", ".join(f"{s.name} ({s.layout.estimate.pe}, {s.layout.simd})" for s in net.stages)
    paths.append(atomic_write_text(out_dir / "README.md", README.format(
        top=net.top, model=model or net.name, layers=layers, n_files=len(net.files), iw1=net.in_width - 1,
        ow1=net.out_width - 1, in_c=s0.in_shape[0], in_b=s0.in_bits, npix=net.in_pixels, nout=net.out_elems,
        nimg=nimg)))
    return paths


def _run(cmd: list[str], cwd: Path, timeout: float) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise HardwareError(f"{cmd[0]} did not finish in {timeout:g} s (in {cwd})") from None
    if proc.returncode != 0:
        raise HardwareError(f"{cmd[0]} failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


def compile_sim(folder: Path, simulator: str = "verilator", jobs: int = 1, timeout_s: float = 1800.0) -> float:
    """Compile the testbench in ``folder`` (see :func:`write_build`); returns the seconds it took."""
    if simulator not in SIMULATORS:
        raise HardwareError(f"simulator {simulator!r} is not one of {', '.join(SIMULATORS)}")
    if not available(simulator):
        raise HardwareError(f"{simulator} is not installed (Debian: apt-get install "
                            f"{'verilator' if simulator == 'verilator' else 'iverilog'})")
    t0 = time.perf_counter()
    if simulator == "verilator":
        _run(["verilator", "--cc", "--exe", "--build", "-j", str(jobs), "-Wno-fatal", "-Wno-lint", "-Wno-style",
              "--top-module", "tb", "-o", "tb_sim", "--Mdir", "obj_dir", "tb.v", "-f", "files.f", "tb_main.cpp",
              "-MAKEFLAGS", "OPT_FAST=-O1"], folder, timeout_s)
    else:
        _run(["iverilog", "-g2005", "-o", "tb.vvp", "-s", "tb_icarus", "tb_icarus.v", "tb.v", "-f", "files.f"],
             folder, timeout_s)
    return time.perf_counter() - t0


def run_sim(folder: Path, simulator: str = "verilator", seed: int = 1, valid: int = 256, ready: int = 256,
            max_cycles: int = 100_000_000, hold: int = 0, images: int = 0,
            timeout_s: float = 3600.0) -> tuple[str, float]:
    """Run the compiled testbench on its first ``images`` images (0: all); returns (the output log, seconds)."""
    for what, p in (("valid", valid), ("ready", ready)):
        if not 1 <= p <= 256:
            raise HardwareError(f"{what} probability {p}/256: must be in 1..256")
    args = [f"+seed={seed}", f"+valid={valid}", f"+ready={ready}", f"+maxcycles={max_cycles}", f"+hold={hold}",
            *([f"+images={images}"] if images else [])]
    cmd = ["./obj_dir/tb_sim", *args] if simulator == "verilator" else ["vvp", "-n", "tb.vvp", *args]
    t0 = time.perf_counter()
    _run(cmd, folder, timeout_s)
    return (folder / "tb_out.txt").read_text(), time.perf_counter() - t0


def compare(log: str, reference: np.ndarray) -> dict[str, Any]:
    """Every logged output beat against ``reference`` (N, elements) in stream order (see
    :func:`mixq.rtl.network.output_order`): counts, first mismatches, frame-end cycles."""
    n, e = reference.shape
    vals: list[int] = []
    cyc: list[int] = []
    last: list[int] = []
    end = (0, 0, 0, 0)
    timeout = False
    layers: dict[int, list[tuple[int, int]]] = {}
    for line in log.splitlines():
        p = line.split()
        if not p:
            continue
        if p[0] == "layer":
            layers.setdefault(int(p[1]), []).append((int(p[2]), int(p[3])))
        elif p[0] == "timeout":
            timeout = True
        elif p[0] == "end":
            end = (int(p[1]), int(p[2]), int(p[3]), int(p[4]))
        else:
            cyc.append(int(p[0]))
            vals.append(int(p[1]))
            last.append(int(p[2]))
    ref = reference.reshape(-1)
    got = np.array(vals[: ref.size], dtype=np.int64)
    bad = np.flatnonzero(got != ref[: got.size])
    first = [(int(i // e), int(i % e), int(got[i]), int(ref[i])) for i in bad[:10]]
    want_last = (np.arange(len(last)) % e) == e - 1
    bad_last = int(np.count_nonzero(np.array(last, dtype=bool) != want_last)) if last else 0
    ends = [cyc[k * e + e - 1] for k in range(min(n, len(cyc) // e))]
    return {"values": np.array(vals, dtype=np.int64), "mismatches": int(bad.size), "first": first,
            "missing": max(0, ref.size - len(vals)), "extra": max(0, len(vals) - ref.size), "bad_tlast": bad_last,
            "timeout": timeout, "cycles": end[0], "first_input": end[2], "stalls": end[3], "frame_ends": ends,
            "layer_frames": [layers[i] for i in sorted(layers)]}


def simulate(net: NetworkRtl, folder: Path, reference: np.ndarray, simulator: str = "verilator", seed: int = 1,
             valid: int = 256, ready: int = 256, compile_: bool = True, max_cycles: int | None = None,
             hold: int = 0, jobs: int = 1) -> SimResult:
    """Compile (unless ``compile_`` is False: already built) and run the testbench :func:`write_build` wrote in
    ``folder`` on its first N images, and compare every output element with ``reference`` (N, elements)."""
    n = int(reference.shape[0])
    ct = compile_sim(folder, simulator, jobs) if compile_ else 0.0
    if max_cycles is None:  # generous: the design's frame interval, slowed by the randomized handshakes
        est = net.estimate()["design_cycles_per_frame"]
        slow = 256 / max(1, min(valid, ready))
        max_cycles = int((n + 3) * (est + net.in_pixels + net.out_elems) * slow * 4 + hold + 100_000)
    log, rt = run_sim(folder, simulator, seed, valid, ready, max_cycles, hold, n)
    c = compare(log, reference)
    return SimResult(simulator, n, int(reference.size), len(c["values"]), c["mismatches"], c["missing"], c["extra"],
                     c["bad_tlast"], c["timeout"], c["stalls"], c["cycles"], c["frame_ends"], c["first_input"], ct,
                     rt, seed, valid, ready, hold, c["values"], c["first"], c["layer_frames"])
