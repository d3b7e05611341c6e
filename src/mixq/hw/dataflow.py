"""FINN's dataflow components around a compute engine (``ArchOptions(dataflow="finn")``).

What FINN builds for a streaming design besides the multiply-accumulate lanes, each
priced from the structure of its source (Xilinx/finn at e74913dc, 2020-09-05 — the
build behind FINN's published CNV-W1A1 figures, see ``benchmarks/finn_cnv.py`` — and
Xilinx/finn-hlslib):

* **weight streamer** (``mem_mode`` "decoupled"): one memory per engine,
  ``PE * SIMD * W`` bits wide padded to a byte (``get_weightstream_width_padded``),
  ``WMEM = MW * MH / (PE * SIMD)`` deep, at ``ram_style`` "auto" (Vivado's choice:
  :func:`mixq.hw.memory.inferred_blocks`); its read has two pipeline registers
  (``finn-rtllib/memstream/hdl/ramb18_sdp.v``: ``rdatab``, ``rdqb``; block RAM absorbs one)
  and the HLS engine registers the stream it reads (one more ``width`` of flip-flops);
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
  inserted (``InsertFIFO``: HLS streams already hold two words).

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

SWG_LUT = 300.0  # FINN's estimate of the HLS sliding-window generator's control (LUTs)
SWG_FF = 100.0  # its loop counters (flip-flops)
FIFO_CTRL = 12.0  # a Q_srl FIFO's state machine (LUTs and flip-flops each), beside its address counter


def _mem(width: int, depth: int, copies: int, part: Part, model: CostModel, style: str) -> Resources:
    pc, mc = model.lutram_coefs()
    m = choose_memory(width, depth, part, style, pc, mc, copies)
    return Resources(lut=m.lut, bram=float(m.bram), uram=float(m.uram))


def weight_streamer(width: int, depth: int, part: Part, model: CostModel, style: str = "vivado") -> Resources:
    """FINN's decoupled weight memory of one engine: ``width`` bits (padded to a byte) x ``depth`` words,
    its two read registers (one absorbed by block RAM) and the engine's input register of the stream."""
    if width <= 0 or depth <= 0:
        return Resources()
    width = 8 * math.ceil(width / 8)
    mem = _mem(width, depth, 1, part, model, style)
    regs = (1 if mem.bram or mem.uram else 2) + 1
    addr = max(1, math.ceil(math.log2(depth)))
    return mem + Resources(lut=2.0 * addr, ff=float(regs * width + addr))


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
