"""On-chip memory cost: weights and buffers in block RAM, UltraRAM or LUTRAM.

Block RAM counts follow the primitive shapes (the best of ``ceil(width / w) *
ceil(depth / d)`` over the shapes one block offers; a RAMB36 is two 18-Kb
halves), which is what ``yosys synth_xilinx`` infers for a simple-dual-port
memory (checked in the calibration sweep). LUTRAM is built from RAM32M (32 x 6
per 4 LUTs) or RAM64M (64 x 3 per 4 LUTs) plus a read multiplexer for deeper
memories; its LUT cost is fitted with the other PE costs (kind ``ram``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mixq.hw.parts import URAM288, BlockRam, Part


def block_count(width: int, depth: int, bram: BlockRam) -> int:
    """Blocks of ``bram`` a ``width`` x ``depth`` memory takes (0 for an empty memory).

    >>> from mixq.hw.parts import BRAM18
    >>> block_count(16, 1024, BRAM18), block_count(72, 512, BRAM18), block_count(4, 16384, BRAM18)
    (1, 2, 4)
    """
    if width <= 0 or depth <= 0:
        return 0
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in bram.shapes)


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
    """
    if width <= 0 or depth <= 0 or copies <= 0:
        return MemChoice("none", 0.0, 0, 0)
    opts: dict[str, MemChoice] = {
        "lutram": MemChoice("lutram", copies * lutram_luts(width, depth, prim_coef, mux_coef), 0, 0),
        "bram": MemChoice("bram", 0.0, copies * block_count(width, depth, part.bram_type), 0),
    }
    if part.uram:
        opts["uram"] = MemChoice("uram", 0.0, 0, copies * block_count(width, depth, URAM288))
    if style != "auto":
        if style not in opts:
            from mixq.errors import HardwareError

            raise HardwareError(f"memory style {style!r} is not available on {part.name}; "
                                f"choose from {', '.join(['auto', *opts])}")
        return opts[style]

    def share(m: MemChoice) -> float:
        return m.lut / part.lut + m.bram / max(part.bram, 1) + (m.uram / part.uram if part.uram else 0.0)

    return min(opts.values(), key=share)
