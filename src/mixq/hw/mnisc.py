"""The single-engine ("mnisc") accelerator template: one execution unit (EU) runs a whole network as a
program of convolutions, reading its inputs from DDR and writing its outputs back once per step.

The EU is ``p`` x ``s`` MAC lanes of ``wbits`` x ``abits`` (int2 / int4 / int8): each cycle it takes ``s``
activations (one window column slice from the line buffers) and ``p`` x ``s`` weights and adds to ``p``
output rows. A step (:class:`EuStep`, plain data; :mod:`mixq.rtl.mnisc` makes them from a lowered
:class:`mixq.engine.program.Program`) is a conv with zero insertion, padding, stride and groups whose
accumulators go through the output pipeline (requantizers, clamps, one max-pool unit) to DDR.

Timing of a conv step, for ``L = (C / groups) * kh * kw`` products per output and ``O / groups`` rows per
group (groups run one after the other; the ``p`` rows of the EU share one activation vector):

    passes  = ceil(in_bits / abits) * ceil(step wbits / wbits)   (wider codes: bit-sliced, shift-added)
    cycles  = passes * Ho * Wo * groups * ceil((O / groups) / p) * ceil(L / s) + step_cycles
    bytes   = (inputs read once + outputs written + weights and per-row constants) / 8
    seconds = max(cycles / clock, bytes / (ddr_gbps * ddr_efficiency))          (the roofline)

A zero-inserted input (a transposed conv) is computed with its zeros, as the streaming template prices it.
A pixel shuffle or concat step moves no data when ``fuse_moves`` (the producing step writes its output
at the shuffled / concatenated address: an address generator), else it is one DDR read and write.
Steps run one after another: a frame takes the sum of the steps' seconds.

Resources (calibrated PE costs, :class:`mixq.hw.cost.CostModel`): ``p`` dot units of ``s`` lanes
(``lane`` kind: ``fixed_lut`` or ``fixed_dsp``), ``ceil(p * outputs / requant_share)`` requantizers,
line buffers of ``(kh - 1)`` padded rows plus ``kw`` pixels of every input channel (the largest step),
a weight buffer of the largest step's weights, ``p`` max-pool comparators of ``abits`` LUTs each (an
assumption, stated), control and shell (:class:`mixq.hw.units.ArchOptions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from mixq.errors import HardwareError
from mixq.hw.cost import CostModel, Resources
from mixq.hw.memory import choose_memory
from mixq.hw.parts import Part, get_part
from mixq.hw.pe import PeConfig
from mixq.hw.units import ArchOptions, budget, requant_kind, shell

LANE_BITS = (2, 4, 8)
LANES = ("fixed_lut", "fixed_dsp")
CONST_BITS_PER_ROW = 32 + 16 + 8  # bias, requant multiplier M, shift n of one output row
MOVE_KINDS = ("pixel_shuffle", "concat")


@dataclass(frozen=True)
class EuStep:
    """One step of the program as the hardware sees it (shapes and widths only)."""

    name: str
    kind: str  # conv, add, linear, sumpool, identity, upsample, or a move: pixel_shuffle, concat
    in_shape: tuple[int, int, int]  # (C, H, W) read, before zero insertion and padding
    out_shape: tuple[int, int, int]  # (O, Ho, Wo) of the accumulator (a move: its output)
    kernel: tuple[int, int] = (1, 1)
    groups: int = 1
    zero_insert: tuple[int, int] = (1, 1)
    padded_width: int = 0  # width of the zero-inserted, padded row the line buffer holds
    in_bits: int = 8  # widest input code
    wbits: int = 8  # widest weight code
    read_bits: int = 0  # bits read from DDR (every input once)
    write_bits: int = 0  # bits written (every output)
    weight_bits: int = 0  # weight codes at wbits, plus the per-row constants
    outputs: int = 1
    pooled: bool = False

    @property
    def is_move(self) -> bool:
        return self.kind in MOVE_KINDS

    @property
    def row_length(self) -> int:
        return self.in_shape[0] // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def macs(self) -> int:
        return 0 if self.is_move else math.prod(self.out_shape) * self.row_length


@dataclass(frozen=True)
class EuConfig:
    """The EU: ``p`` rows x ``s`` lanes at ``wbits`` x ``abits``; clock and DDR default to the part's."""

    p: int = 16
    s: int = 16
    wbits: int = 8
    abits: int = 8
    lane: str = "fixed_lut"
    clock_mhz: float = 0.0  # 0: the part's
    ddr_gbps: float = 0.0  # GB/s; 0: the part's
    ddr_efficiency: float = 0.8
    step_cycles: int = 64  # per-step set-up (descriptor fetch, pipeline fill)
    fuse_moves: bool = True

    def __post_init__(self) -> None:
        if self.p < 1 or self.s < 1:
            raise HardwareError(f"mnisc: p and s must be >= 1, got p={self.p}, s={self.s}")
        if self.wbits not in LANE_BITS or self.abits not in LANE_BITS:
            raise HardwareError(f"mnisc: wbits / abits must be one of {LANE_BITS}, got {self.wbits} / {self.abits}")
        if self.lane not in LANES:
            raise HardwareError(f"mnisc: lane {self.lane!r} is not one of {', '.join(LANES)}")
        if not 0 < self.ddr_efficiency <= 1:
            raise HardwareError(f"mnisc: ddr_efficiency must be in (0, 1], got {self.ddr_efficiency}")


@dataclass(frozen=True)
class StepTime:
    name: str
    kind: str
    macs: int
    passes: int
    cycles: int
    ddr_bytes: float
    compute_s: float
    ddr_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.ddr_s)

    @property
    def bound(self) -> str:
        return "ddr" if self.ddr_s > self.compute_s else "compute"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "macs": self.macs, "passes": self.passes,
                "cycles": self.cycles, "ddr_bytes": round(self.ddr_bytes), "compute_ms": round(self.compute_s * 1e3, 4),
                "ddr_ms": round(self.ddr_s * 1e3, 4), "bound": self.bound}


@dataclass(frozen=True)
class MniscEstimate:
    config: EuConfig
    part: str
    clock_mhz: float
    ddr_gbps: float
    steps: tuple[StepTime, ...]
    resources: Resources
    detail: dict[str, Resources] = field(default_factory=dict)
    fits: bool = True

    @property
    def frame_s(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_s if self.frame_s > 0 else math.inf

    @property
    def bound(self) -> str:
        """What most of the frame time waits for: ``compute`` or ``ddr``."""
        ddr = sum(s.seconds for s in self.steps if s.bound == "ddr")
        return "ddr" if ddr > self.frame_s / 2 else "compute"

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.__dict__, "part": self.part, "clock_mhz": self.clock_mhz,
                "ddr_gbps": self.ddr_gbps, "frame_ms": round(self.frame_s * 1e3, 4), "fps": round(self.fps, 3),
                "bound": self.bound, "macs": sum(s.macs for s in self.steps),
                "ddr_bytes": round(sum(s.ddr_bytes for s in self.steps)), "fits": self.fits,
                "resources": self.resources.to_dict(), "detail": {k: v.to_dict() for k, v in self.detail.items()},
                "steps": [s.to_dict() for s in self.steps]}


def _scaled(n: int, new: int, base: int, what: str) -> int:
    if (n * new) % base:
        raise HardwareError(f"mnisc: {what}: {n} * {new} / {base} is not an integer; the input size must keep every "
                            "layer's size whole")
    return n * new // base


def at_resolution(steps: tuple[EuStep, ...] | list[EuStep], base: tuple[int, int],
                  size: tuple[int, int]) -> tuple[EuStep, ...]:
    """The steps of a fully convolutional program lowered at input ``base`` (H, W), at input ``size``:
    every feature map's height and width scale by ``size / base`` (exactly, else a HardwareError naming
    the step), a line buffer's padded row by the width's change times the zero insertion, the bits moved
    by the area. A step whose map is 1 x 1 or whose kernel covers the whole map (global pooling, a
    classifier) does not scale and is refused by name."""
    (bh, bw), (h, w) = base, size
    out = []
    for st in steps:
        c, hi, wi = st.in_shape
        o, ho, wo = st.out_shape
        if (hi, wi) == (1, 1) or (st.kernel == (hi, wi) and st.kernel != (1, 1)):
            raise HardwareError(f"mnisc: step {st.name!r} ({st.kind}) sees the whole map; the program is not "
                                "fully convolutional and cannot be scaled to another input size")
        nh, nw = _scaled(hi, h, bh, st.name), _scaled(wi, w, bw, st.name)
        out.append(replace(
            st, in_shape=(c, nh, nw), out_shape=(o, _scaled(ho, h, bh, st.name), _scaled(wo, w, bw, st.name)),
            padded_width=st.padded_width + (nw - wi) * st.zero_insert[1] if st.padded_width else 0,
            read_bits=_scaled(st.read_bits, h * w, bh * bw, st.name),
            write_bits=_scaled(st.write_bits, h * w, bh * bw, st.name)))
    return tuple(out)


def step_passes(step: EuStep, cfg: EuConfig) -> int:
    """Bit-sliced passes of a step whose codes are wider than the lanes."""
    return math.ceil(step.in_bits / cfg.abits) * math.ceil(step.wbits / cfg.wbits)


def step_cycles(step: EuStep, cfg: EuConfig) -> int:
    """EU cycles of one step (module docstring); a move takes none."""
    if step.is_move:
        return 0
    o, ho, wo = step.out_shape
    per_pixel = step.groups * math.ceil(o // step.groups / cfg.p) * math.ceil(step.row_length / cfg.s)
    return step_passes(step, cfg) * ho * wo * per_pixel + cfg.step_cycles


def step_time(step: EuStep, cfg: EuConfig, clock_hz: float, bytes_per_s: float) -> StepTime:
    """Cycles, DDR bytes and the roofline time of one step."""
    if step.is_move:
        moved = 0.0 if cfg.fuse_moves else (step.read_bits + step.write_bits) / 8
        return StepTime(step.name, step.kind, 0, 0, 0, moved, 0.0, moved / bytes_per_s)
    cycles = step_cycles(step, cfg)
    moved = (step.read_bits + step.write_bits + step.weight_bits) / 8
    return StepTime(step.name, step.kind, step.macs, step_passes(step, cfg), cycles, moved, cycles / clock_hz,
                    moved / bytes_per_s)


def line_buffer_bits(step: EuStep, abits: int) -> int:
    """(kh - 1) padded rows plus kw pixels of every input channel, at the lane width (wider codes are
    sliced before they enter the buffer)."""
    if step.is_move or step.kernel == (1, 1):
        return 0
    kh, kw = step.kernel
    return ((kh - 1) * step.padded_width + kw) * step.in_shape[0] * min(step.in_bits, abits)


def eu_resources(steps: tuple[EuStep, ...], cfg: EuConfig, part: Part, model: CostModel,
                 opts: ArchOptions) -> dict[str, Resources]:
    """The EU's resources by term: lanes, requantizers, pooling, line buffers, weight buffer, control."""
    convs = [s for s in steps if not s.is_move]
    if not convs:
        raise HardwareError("mnisc: the program has no conv step")
    acc_len = max(s.row_length for s in convs)
    lanes = PeConfig(cfg.lane, cfg.wbits, cfg.abits, cfg.s, acc_len=acc_len)
    nreq = math.ceil(cfg.p * max(s.outputs for s in convs) / max(opts.requant_share, 1))
    req = PeConfig(requant_kind(opts), accw=lanes.acc_bits, out_bits=cfg.abits)
    pc, mc = model.lutram_coefs()

    def mem(bits: int, width: int) -> Resources:
        m = choose_memory(width, math.ceil(bits / width), part, "auto", pc, mc) if bits else None
        return Resources(lut=m.lut, bram=float(m.bram), uram=float(m.uram)) if m else Resources()

    lb = max(line_buffer_bits(s, cfg.abits) for s in convs)
    wb = max(s.weight_bits for s in convs)
    return {
        "lanes": model.pe(lanes, part.dsp_type) * cfg.p,
        "requant": model.pe(req, part.dsp_type) * nreq,
        "pool": Resources(lut=float(cfg.p * cfg.abits), ff=float(cfg.p * cfg.abits)),
        "line_buffer": mem(lb, cfg.s * cfg.abits),
        "weight_buffer": mem(wb, cfg.p * cfg.s * cfg.wbits),
        "control": Resources(lut=opts.engine_lut, ff=opts.engine_ff) + shell(opts),
    }


def estimate_mnisc(steps: tuple[EuStep, ...] | list[EuStep], cfg: EuConfig | None = None,
                   part: str | Part = "xc7z020", model: CostModel | None = None,
                   opts: ArchOptions | None = None) -> MniscEstimate:
    """Per-step cycles, DDR bytes and roofline bound, frames/s and resources of the program on one EU."""
    cfg, opts = cfg or EuConfig(), opts or ArchOptions()
    p, model = get_part(part), model or CostModel.default()
    steps = tuple(steps)
    clock = cfg.clock_mhz or p.clock_mhz
    gbps = cfg.ddr_gbps or p.ddr_gbps
    times = tuple(step_time(s, cfg, clock * 1e6, gbps * 1e9 * cfg.ddr_efficiency) for s in steps)
    detail = eu_resources(steps, cfg, p, model, opts)
    total = Resources.total(detail.values())
    return MniscEstimate(cfg, p.name, clock, gbps, times, total, detail, total.fits(budget(p, opts)))
