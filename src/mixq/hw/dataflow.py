"""FINN's dataflow components around a compute engine (``ArchOptions(dataflow="finn")``).

What FINN builds for a streaming design besides the multiply-accumulate lanes, each
priced from the structure of its source (Xilinx/finn at e74913dc, 2020-09-05 — the
build behind FINN's published CNV-W1A1 figures, see ``benchmarks/finn_cnv.py`` — and
Xilinx/finn-hlslib):

* **weight streamer** (``mem_mode`` "decoupled"): one memory per engine,
  ``PE * SIMD * W`` bits wide padded to a byte (``get_weightstream_width_padded``),
  ``WMEM = MW * MH / (PE * SIMD)`` deep, at ``ram_style`` "auto" (Vivado's choice:
  :func:`mixq.hw.memory.inferred_blocks`); its read has two pipeline registers
  (``finn-rtllib/memstream/hdl/ramb18_sdp.v``: ``rdatab``, ``rdqb``; block RAM absorbs one); the
  engine's register of the stream is its ``weights`` port's register slice (below);
* **threshold units**: one per PE (thresholds partitioned ``complete dim=1``), each holding
  ``2**bits - 1`` thresholds for each of its ``MH / PE`` channels (``TMEM``); none on a layer
  whose output leaves the network (FINN's ``noActivation``);
* **input buffer** (finn-hlslib ``mvau.hpp`` at cfafe11, the commit FINN e74913dc pins):
  ``TI inputBuf[SF]`` with ``ARRAY_PARTITION complete`` — the ``SF = MW / SIMD`` input words
  the engine reuses for each of its ``MH / PE`` row folds, in flip-flops, read through an
  ``SF``-to-1 multiplexer (one LUT6 per four inputs per bit);
* **sliding-window generator** (``ConvolutionInputGenerator``, finn-hlslib ``slidingwindow.h``):
  ``k / stride + 1`` row buffers, each ``stride * IFMDim * IFMChannels / SIMD`` words of
  ``SIMD * A`` bits, in LUTRAM (FINN's default ``ram_style`` "distributed"), plus its control;
* **stream FIFOs** (``StreamingFIFO``, ``impl_style`` "rtl": ``Q_srl.v``): an SRL shift
  register of ``depth - 1`` words and an output register; FIFOs of depth 2 or less are not
  inserted (``InsertFIFO``: HLS streams already hold two words);
* **AXI-Stream register slices** (Vivado HLS 2020.1, the version FINN at e74913dc packages its RTL IP
  with: ``finn-rtllib/memstream/component.xml``): every AXI-Stream port of an HLS IP (the MVAU's
  ``in0``, ``weights`` and ``out``, the sliding-window generator's, the max pool's, a width
  converter's, an IODMA's stream) is wrapped in ``regslice_both`` — an input skid register and an output
  register of ``width + 1`` bits each (valid included) and a 2-bit count whose only reader, ``apdone_blk``,
  is unused under ``ap_ctrl_none``. Seen in FINN's generated RTL (pgreksic/FINN_Export_AXI_Lite_Missing
  at 1a99d787, ``.../project_StreamingFCLayer_Batch_1/sol1/impl/ip/hdl/verilog/``: three ``regslice_both``
  in ``StreamingFCLayer_Batch_1_StreamingFCLayer_Batch_1.v``); HLS's csynth report does not count them
  (they are added at RTL export). yosys 0.23 ``synth_xilinx`` of an equivalent skid buffer: ``2 W + 2``
  flip-flops at W = 8, 32, 1024 (the count removed), and ``2 W + 2`` LUTs, where Vivado puts the load and
  clear on the flip-flops' CE / R pins and keeps only the output select (``W + 1`` LUTs, priced here;
  Vivado's 8 -> 32 converter below has 50 LUT3 for its two slices' 42 selects and its buffer);
* **stream width converters** (``StreamingDataWidthConverter_Batch``, finn-hlslib ``streamtools.h``,
  inserted by ``InsertDWC`` where a producer's stream width differs from its consumer's): one buffer
  register of ``max(in, out)`` bits shifted or loaded through a multiplexer per bit, two 32-bit loop
  counters (``unsigned int t`` against the run-time trip count, and the word index) and the register
  slices of its two ports;
* **IODMAs** (``InsertIODMA(64)`` in ``ZynqBuild``: one for ``graph.input[0]``, one for
  ``graph.output[0]``, each with an AXI master ``gcd(transfer bits, 64)`` wide): FINN's figure sums them
  with the dataflow nodes (``post_synth_res`` visits every partition), so they are FINN components here,
  not shell. Vivado 2020.1 post-synthesis of FINN's IODMAs on the xc7z020 (umav1511/finn at bd01d875,
  ``notebooks/end2end_example/cybersecurity/basline-reports/vivado_stitch_proj_x6mie7gk/`` and
  ``.../vivado_stitch_proj_ewxe7hds/``, ``*_IODMA_0_0_utilization_synth.rpt``): :data:`IODMA_IN` (16-bit
  interface and stream), :data:`IODMA_OUT` (8-bit); plus the converter between the interface and the
  byte-padded stream (inside the IODMA, through the two widths' least common multiple where one is not
  a multiple of the other: ``iodma.py``'s "intfWidth=32b -> 96b -> sreamWidth=24b") and the stream port's
  register slice beyond the measured one. The AXI master's own data registers are not scaled with its
  width.

The same Vivado runs check the structural prices above (``benchmarks/finn_cnv.py`` prints the table):
width converters 64 -> 32 and 8 -> 32 bits, 341 / 190 flip-flops measured; decoupled weight streamers of
960 x 80, 128 x 64 and 8 x 16 bits, 13.5 / 2 / 0 RAMB36 measured and priced.

Assumed constants (not calibrated; named here): :data:`SWG_LUT` is FINN's own estimate of a
sliding-window generator's control (``ConvolutionInputGenerator.lut_estimation``: ``300 +``
the buffer); :data:`SWG_FF` (about ten loop counters) and :data:`FIFO_CTRL` (address counter
and state) are structural guesses.
"""

from __future__ import annotations

import math

from mixq.hw.cost import CostModel, Resources
from mixq.hw.memory import choose_memory
from mixq.hw.parts import Part

#: FINN's IODMAs, Vivado 2020.1 post-synthesis on the xc7z020 (see the module docstring); bram in 18-Kb halves
IODMA_IN = Resources(lut=769.0, ff=1297.0, bram=1.0)
IODMA_IN_WIDTH = 16  # its stream (and interface) width
IODMA_OUT = Resources(lut=742.0, ff=1193.0, bram=1.0)
IODMA_OUT_WIDTH = 8
IODMA_WIDTH = 64  # InsertIODMA(64) in ZynqBuild: the AXI master's widest data width
DWC_COUNTER_FF = 64  # a width converter's two HLS loop counters (unsigned int t, and the word index)
DWC_COUNTER_LUT = 32  # the trip counter's increment and compare
SWG_LUT = 300.0  # FINN's estimate of the HLS sliding-window generator's control (LUTs)
SWG_FF = 100.0  # its loop counters (flip-flops)
FIFO_CTRL = 12.0  # a Q_srl FIFO's state machine (LUTs and flip-flops each), beside its address counter


def _mem(width: int, depth: int, copies: int, part: Part, model: CostModel, style: str) -> Resources:
    pc, mc = model.lutram_coefs()
    m = choose_memory(width, depth, part, style, pc, mc, copies)
    return Resources(lut=m.lut, bram=float(m.bram), uram=float(m.uram))


def weight_streamer(width: int, depth: int, part: Part, model: CostModel, style: str = "vivado") -> Resources:
    """FINN's decoupled weight memory of one engine: ``width`` bits (padded to a byte) x ``depth`` words
    and its two read registers (one absorbed by block RAM). The engine's register of the stream is its
    ``weights`` port's register slice (:func:`regslice`)."""
    if width <= 0 or depth <= 0:
        return Resources()
    width = 8 * math.ceil(width / 8)
    mem = _mem(width, depth, 1, part, model, style)
    regs = 1 if mem.bram or mem.uram else 2
    addr = max(1, math.ceil(math.log2(depth)))
    return mem + Resources(lut=2.0 * addr, ff=float(regs * width + addr))


def regslice(width: int) -> Resources:
    """Vivado HLS's ``regslice_both`` on an AXI-Stream port of ``width`` bits (TDATA padded to a byte):
    ``2 (W + 1)`` flip-flops and an output select per bit (``W + 1`` LUTs)."""
    if width <= 0:
        return Resources()
    w = 8 * math.ceil(width / 8)
    return Resources(lut=float(w + 1), ff=float(2 * (w + 1)))


def width_converter(in_width: int, out_width: int) -> Resources:
    """A ``StreamingDataWidthConverter_Batch`` from ``in_width`` to ``out_width`` bits (none when equal): the
    buffer word with a multiplexer per bit, the loop counters, and the register slices of its two ports."""
    if in_width <= 0 or out_width <= 0 or in_width == out_width:
        return Resources()
    return _converter_core(in_width, out_width) + regslice(in_width) + regslice(out_width)


def _converter_core(in_width: int, out_width: int) -> Resources:
    """The converter without its ports' register slices; widths that are not multiples of each other go
    through their least common multiple (two converters, as FINN's IODMA does)."""
    if in_width == out_width:
        return Resources()
    hi, lo = max(in_width, out_width), min(in_width, out_width)
    if hi % lo:
        mid = math.lcm(in_width, out_width)
        return _converter_core(in_width, mid) + _converter_core(mid, out_width)
    return Resources(lut=float(hi + DWC_COUNTER_LUT), ff=float(hi + DWC_COUNTER_FF))


def iodma_width(stream_width: int, tensor_bits: int) -> int:
    """The AXI master's width ``InsertIODMA`` picks: ``gcd(transfer bits, 64)``, the transfer being the
    tensor as words of the byte-padded stream."""
    padded = 8 * math.ceil(stream_width / 8)
    words = max(1, math.ceil(tensor_bits / max(stream_width, 1)))
    return math.gcd(words * padded, IODMA_WIDTH)


def iodma(direction: str, stream_width: int, tensor_bits: int) -> Resources:
    """One FINN IODMA (``"in"``: memory to stream, ``"out"``: stream to memory) for a stream of
    ``stream_width`` bits carrying ``tensor_bits`` a frame: the measured IODMA, the converter between the
    interface (:func:`iodma_width`) and the byte-padded stream (inside the IODMA) and the stream port's
    register slice beyond the measured one's."""
    if stream_width <= 0:
        return Resources()
    base, measured = (IODMA_IN, IODMA_IN_WIDTH) if direction == "in" else (IODMA_OUT, IODMA_OUT_WIDTH)
    intf, padded = iodma_width(stream_width, tensor_bits), 8 * math.ceil(stream_width / 8)
    conv = _converter_core(intf, padded) if direction == "in" else _converter_core(padded, intf)
    port = regslice(stream_width) + regslice(measured) * -1.0
    return base + conv + port


def threshold_memory(pe: int, channels: int, n_thresholds: int, accw: int, part: Part, model: CostModel,
                     style: str = "vivado") -> Resources:
    """The thresholds of ``pe`` threshold units: ``n_thresholds`` of ``accw`` bits for each of the
    ``ceil(channels / pe)`` channels a unit serves (one memory per unit)."""
    if pe <= 0 or channels <= 0 or n_thresholds <= 0:
        return Resources()
    return _mem(n_thresholds * accw, math.ceil(channels / pe), pe, part, model, style)


def input_buffer(row_length: int, simd: int, abits: int) -> Resources:
    """The MVAU's input-vector buffer: ``ceil(row_length / simd)`` words of ``simd * abits`` bits in
    flip-flops and a multiplexer reading one of them (4 inputs per LUT)."""
    words = math.ceil(max(row_length, 1) / max(simd, 1))
    width = max(simd, 1) * abits
    mux = width * math.ceil(words / 4) if words > 1 else 0
    return Resources(lut=float(mux), ff=float(words * width))


def swg_blocks(kernel: int, stride: int) -> int:
    """Row buffers of finn-hlslib's sliding-window generator: ``kernel / stride + 1``."""
    return kernel // max(stride, 1) + 1


def sliding_window(in_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int], simd: int,
                   abits: int, part: Part, model: CostModel) -> Resources:
    """A ``ConvolutionInputGenerator`` for a ``(C, H, W)`` input read ``simd`` channels per cycle (none for
    a 1 x 1 kernel): its row buffers in LUTRAM, control and the output pipeline."""
    if len(in_shape) != 3 or (kernel[0] <= 1 and kernel[1] <= 1):
        return Resources()
    c, _, w = in_shape
    simd = max(1, min(simd, c))
    blocks = swg_blocks(kernel[0], stride[0])
    words = stride[0] * w * math.ceil(c / simd)
    width = simd * abits
    buf = _mem(width, words, blocks, part, model, "lutram")
    # each block's read is registered, then one output register
    return buf + Resources(lut=SWG_LUT, ff=SWG_FF + (blocks + 1) * width)


def fifo(width: int, depth: int) -> Resources:
    """A ``StreamingFIFO`` (``Q_srl``) of ``depth`` words of ``width`` bits: ``width * ceil((depth - 1) / 32)``
    SRLC32E LUTs, an output register, an address counter and a small state machine. Depth 2 or less: none."""
    if depth <= 2 or width <= 0:
        return Resources()
    addr = max(1, math.ceil(math.log2(depth)))
    srl = width * math.ceil((depth - 1) / 32)
    return Resources(lut=float(srl + 2 * addr) + FIFO_CTRL, ff=float(width + addr) + FIFO_CTRL)


def fifos(depths: tuple[int, ...], width: int) -> Resources:
    """The FIFOs in front of one engine (each ``width`` bits wide)."""
    return Resources.total(fifo(width, d) for d in depths)
