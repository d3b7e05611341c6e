"""On-chip memory cost: weights and buffers in block RAM, UltraRAM or LUTRAM.

Block RAM counts follow the primitive shapes (the best of ``ceil(width / w) *
ceil(depth / d)`` over the shapes one block offers; a RAMB36 is two 18-Kb
halves), which is what ``yosys synth_xilinx`` infers for a simple-dual-port
memory (checked in the calibration sweep). LUTRAM is built from RAM32M (32 x 6
per 4 LUTs) or RAM64M (64 x 3 per 4 LUTs) plus a read multiplexer for deeper
memories; its LUT cost is fitted with the other PE costs (kind ``ram``).

Style ``vivado`` is what Vivado synthesis infers for a RAM left at ``ram_style``
"auto" — FINN's default for its weight streamers (``mem_mode`` "decoupled",
``ram_style`` "auto": "let Vivado decide", Xilinx/finn
``src/finn/custom_op/fpgadataflow/streamingfclayer_batch.py`` at e74913dc): block
RAM from 1024 bits up (the RAMB18 threshold YosysHQ/yosys PR #1533 measured on
Vivado), LUTRAM below; the blocks as Vivado decomposes them (:func:`inferred_blocks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mixq.hw.parts import BRAM18, URAM288, BlockRam, Part

#: RAMB36 shapes (UG473, simple dual port up to 72 bits); one RAMB36 is two 18-Kb units
RAMB36_SHAPES: tuple[tuple[int, int], ...] = ((1, 32768), (2, 16384), (4, 8192), (9, 4096), (18, 2048),
                                              (36, 1024), (72, 512))
#: smallest RAM (bits) Vivado puts in block RAM (YosysHQ/yosys PR #1533: "Vivado infers RAMB18E1 if min
#: bits are 1024")
VIVADO_BRAM_MIN_BITS = 1024
#: families whose block RAM inference rounds a depth up to a power of two (AMD AR# 61995: non-power-of-2
#: depths are supported from UltraScale on, "not supported for 7 Series devices")
POW2_DEPTH_FAMILIES = frozenset({"zynq7000", "artix7", "kintex7", "virtex7"})


def block_count(width: int, depth: int, bram: BlockRam) -> int:
    """Blocks of ``bram`` a ``width`` x ``depth`` memory takes (0 for an empty memory).

    >>> from mixq.hw.parts import BRAM18
    >>> block_count(16, 1024, BRAM18), block_count(72, 512, BRAM18), block_count(4, 16384, BRAM18)
    (1, 2, 4)
    """
    if width <= 0 or depth <= 0:
        return 0
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in bram.shapes)


def _widthwise(width: int, depth: int, shapes: tuple[tuple[int, int], ...], cost: int) -> int:
    """Units of side-by-side blocks each configured as deep as the memory (cascaded beyond the deepest)."""
    fit = [s for s in shapes if s[1] >= depth]
    w, d = min(fit, key=lambda s: s[1]) if fit else max(shapes, key=lambda s: s[1])
    return cost * math.ceil(width / w) * math.ceil(depth / d)


def inferred_blocks(width: int, depth: int, part: Part) -> int:
    """Blocks (the part's native units) Vivado synthesis infers for a ``width`` x ``depth`` RAM.

    Vivado's default decomposition is the timing-efficient one: blocks side by side, each as deep as
    the memory (UG912, RAM_DECOMP: "a RAM specified as 2K x 36 would often be configured as two 2K x 18
    block RAMs arranged side by side"); on 7-series parts the depth is first rounded up to a power of
    two (AR# 61995). On Xilinx parts the wider of RAMB36 / RAMB18 columns is used with one RAMB18 for
    a remainder, as Vivado reports (e.g. 14 RAMB36 + 1 RAMB18 for 1024 x 36).

    >>> from mixq.hw.parts import get_part
    >>> z = get_part("xc7z020")
    >>> inferred_blocks(1024, 36, z), inferred_blocks(32, 18432, z), inferred_blocks(128, 2304, z)
    (29, 64, 29)
    """
    if width <= 0 or depth <= 0:
        return 0
    if part.family in POW2_DEPTH_FAMILIES:
        depth = 1 << (depth - 1).bit_length()
    small = part.bram_type.shapes
    best = _widthwise(width, depth, small, 1)
    if part.bram_type is BRAM18:
        best = min(best, _widthwise(width, depth, RAMB36_SHAPES, 2))
        fit = [s for s in RAMB36_SHAPES if s[1] >= depth]
        if fit:  # RAMB36 columns, and the remainder in one RAMB18 column
            w36, d36 = min(fit, key=lambda s: s[1])
            full, rest = divmod(width, w36)
            mixed = 2 * full * math.ceil(depth / d36) + (_widthwise(rest, depth, small, 1) if rest else 0)
            best = min(best, mixed)
    return best


def lutram_prims(width: int, depth: int) -> int:
    """RAM32M / RAM64M primitives (4 LUTs each) of a ``width`` x ``depth`` LUTRAM."""
    if width <= 0 or depth <= 0:
        return 0
    if depth <= 32:
        return math.ceil(width / 6)
    return math.ceil(width / 3) * math.ceil(depth / 64)


def lutram_mux_bits(width: int, depth: int) -> int:
    """Read-multiplexer inputs beyond the first bank of a LUTRAM deeper than 64."""
    return width * max(0, math.ceil(depth / 64) - 1)


@dataclass(frozen=True)
class MemChoice:
    """Where one memory lives and what it costs there."""

    style: str  # "lutram" | "bram" | "uram" | "none"
    lut: float
    bram: int
    uram: int


def lutram_luts(width: int, depth: int, prim_coef: float = 4.0, mux_coef: float = 1.0) -> float:
    return prim_coef * lutram_prims(width, depth) + mux_coef * lutram_mux_bits(width, depth)


def choose_memory(width: int, depth: int, part: Part, style: str = "auto",
                  prim_coef: float = 4.0, mux_coef: float = 1.0, copies: int = 1) -> MemChoice:
    """Cost of ``copies`` memories of ``width`` x ``depth`` bits in the given ``style``.

    ``auto`` picks the option with the smallest share of the part (LUTRAM LUTs /
    part LUTs vs blocks / part blocks), so small memories go to LUTRAM and large
    ones to block RAM, and UltraRAM when the part has it and it is cheaper.
    ``vivado`` is Vivado's own choice (see the module docstring): block RAM from
    :data:`VIVADO_BRAM_MIN_BITS` up, in the blocks of :func:`inferred_blocks`.
    """
    if width <= 0 or depth <= 0 or copies <= 0:
        return MemChoice("none", 0.0, 0, 0)
    lutram = MemChoice("lutram", copies * lutram_luts(width, depth, prim_coef, mux_coef), 0, 0)
    if style == "vivado":
        if width * depth < VIVADO_BRAM_MIN_BITS:
            return lutram
        return MemChoice("bram", 0.0, copies * inferred_blocks(width, depth, part), 0)
    opts: dict[str, MemChoice] = {
        "lutram": lutram,
        "bram": MemChoice("bram", 0.0, copies * block_count(width, depth, part.bram_type), 0),
    }
    if part.uram:
        opts["uram"] = MemChoice("uram", 0.0, 0, copies * block_count(width, depth, URAM288))
    if style != "auto":
        if style not in opts:
            from mixq.errors import HardwareError

            raise HardwareError(f"memory style {style!r} is not available on {part.name}; "
                                f"choose from {', '.join(['auto', 'vivado', *opts])}")
        return opts[style]

    def share(m: MemChoice) -> float:
        return m.lut / part.lut + m.bram / max(part.bram, 1) + (m.uram / part.uram if part.uram else 0.0)

    return min(opts.values(), key=share)


@lru_cache(maxsize=64)
def _shape_arrays(shapes: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([w for w, _ in shapes], dtype=np.int64)[None, :],
            np.array([d for _, d in shapes], dtype=np.int64)[None, :])


def memory_grid(width: np.ndarray, depth: np.ndarray, copies: np.ndarray, part: Part, style: str = "auto",
                prim_coef: float = 4.0, mux_coef: float = 1.0) -> np.ndarray:
    """:func:`choose_memory` of ``n`` memories at once (``auto``, ``lutram``, ``bram`` or ``uram``): their
    resources ``(n, 5)`` in the order of ``mixq.hw.cost.Resources`` (LUT, FF, DSP, block RAM, UltraRAM),
    the same numbers bit for bit (ties go to LUTRAM, then block RAM, as ``min`` over the options does)."""
    w, d, k = (np.asarray(a, dtype=np.int64) for a in (width, depth, copies))
    live = (w > 0) & (d > 0) & (k > 0)
    w1, d1 = np.maximum(w, 1), np.maximum(d, 1)
    banks = -(-d1 // 64)
    prims = np.where(d1 <= 32, -(-w1 // 6), -(-w1 // 3) * banks)
    mux = w1 * np.maximum(0, banks - 1)
    lut = k * (prim_coef * prims + mux_coef * mux)

    def blocks(ram: BlockRam) -> np.ndarray:  # the best of the block's shapes, all shapes in one pass
        sw, sd = _shape_arrays(ram.shapes)
        return k * (-(-w1[:, None] // sw) * -(-d1[:, None] // sd)).min(axis=1)

    names = ("lutram", "bram", "uram") if part.uram else ("lutram", "bram")
    if style != "auto" and style not in names:
        from mixq.errors import HardwareError

        raise HardwareError(f"memory style {style!r} is not available on {part.name}; "
                            f"choose from {', '.join(['auto', 'vivado', *names])}")
    out = np.zeros((len(w), 5))
    if style == "lutram":
        out[:, 0] = lut
    elif style == "bram":
        out[:, 3] = blocks(part.bram_type)
    elif style == "uram":
        out[:, 4] = blocks(URAM288)
    else:
        bram = blocks(part.bram_type).astype(float)
        # each option's share of the part (its LUTs or its blocks; the other terms are zeros), the first of
        # equal shares as min() takes it
        shares = [lut / part.lut, bram / max(part.bram, 1)]
        if part.uram:
            uram = blocks(URAM288).astype(float)
            shares.append(uram / part.uram)
        best = np.argmin(np.stack(shares), axis=0)
        out[:, 0] = np.where(best == 0, lut, 0.0)
        out[:, 3] = np.where(best == 1, bram, 0.0)
        if part.uram:
            out[:, 4] = np.where(best == 2, uram, 0.0)
    out[~live] = 0.0
    return out
