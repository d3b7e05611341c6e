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
(``lane`` kind: ``fixed_lut`` or ``fixed_dsp``; ``data_bits`` > 0: whole data words, as the RTL EU), the
EU core as :mod:`mixq.rtl.mnisc` builds it (:func:`core_resources` at :func:`eu_widths`: the rows'
accumulators and row select, one two-stage requantizer shared by the rows and sized to the program's
proven ranges, the sequencer with its counters and incremental address generators, each a term linear in
the widths it contains, fitted to yosys runs of the generated core (``data/mnisc_coefficients.json``,
``benchmarks/mnisc_synth.py``), DSPs by the ``mul2dsp`` rule), line buffers of ``(kh - 1)`` padded rows plus
``kw`` pixels of every input channel (the largest step), a weight buffer of the largest step's weights,
``p`` max-pool comparators of ``abits`` LUTs each (an assumption, stated), and the shell
(:class:`mixq.hw.units.ArchOptions`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources as ilr
from pathlib import Path
from typing import Any

import numpy as np

from mixq.errors import HardwareError
from mixq.hw.bits import REQUANT_MULT_BITS, mul_dsps
from mixq.hw.cost import CostModel, Resources
from mixq.hw.memory import choose_memory
from mixq.hw.parts import Part, get_part
from mixq.hw.pe import PeConfig
from mixq.hw.units import ArchOptions, budget, shell
from mixq.hw.window import line_pixels

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
    acc_bits: int = 0  # proven accumulator width (0: unknown, the lanes' width)
    pipe: tuple[int, ...] = ()  # proven output-pipeline widths: vw, m1w, qw, m2w, ew, p1w, p2w, nw, asw (EuWidths)

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
    data_bits: int = 0  # > 0: the core's data word (the RTL's DW; its s = 1 rows multiply whole words); 0: abits

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
    if step.is_move:
        return 0
    return line_pixels(step.kernel, step.padded_width) * step.in_shape[0] * min(step.in_bits, abits)


def eu_resources(steps: tuple[EuStep, ...], cfg: EuConfig, part: Part, model: CostModel,
                 opts: ArchOptions) -> dict[str, Resources]:
    """The EU's resources by term: lanes (the calibrated PE costs), the core's rows, shared two-stage
    requantizer and sequencer (:func:`core_resources` at :func:`eu_widths`: fitted to yosys runs of the
    RTL EU), pooling, line buffers, weight buffer, and the shell."""
    convs = [s for s in steps if not s.is_move]
    if not convs:
        raise HardwareError("mnisc: the program has no conv step")
    acc_len = max(s.row_length for s in convs)
    lanes = PeConfig(cfg.lane, cfg.wbits, cfg.data_bits or cfg.abits, cfg.s, acc_len=acc_len)
    core = core_resources(eu_widths(tuple(steps), cfg))
    pc, mc = model.lutram_coefs()

    def mem(bits: int, width: int) -> Resources:
        m = choose_memory(width, math.ceil(bits / width), part, "auto", pc, mc) if bits else None
        return Resources(lut=m.lut, bram=float(m.bram), uram=float(m.uram)) if m else Resources()

    lb = max(line_buffer_bits(s, cfg.abits) for s in convs)
    wb = max(s.weight_bits for s in convs)
    return {
        "lanes": model.pe(lanes, part.dsp_type) * cfg.p,
        "rows": core["rows"]._replace(dsp=0.0),  # the lanes hold the products
        "requant": core["requant"],
        "sequencer": core["sequencer"],
        "pool": Resources(lut=float(cfg.p * cfg.abits), ff=float(cfg.p * cfg.abits)),
        "line_buffer": mem(lb, cfg.s * cfg.abits),
        "weight_buffer": mem(wb, cfg.p * cfg.s * cfg.wbits),
        "control": shell(opts),
    }


def eu_rates(cfg: EuConfig, part: Part) -> tuple[float, float]:
    """The EU's clock (MHz) and DDR bandwidth (GB/s): the config's, else the part's."""
    return cfg.clock_mhz or part.clock_mhz, cfg.ddr_gbps or part.ddr_gbps


def step_times(steps: tuple[EuStep, ...] | list[EuStep], cfg: EuConfig, part: Part) -> tuple[StepTime, ...]:
    """:func:`step_time` of every step at the EU's clock and its DDR bandwidth times ``ddr_efficiency``."""
    clock, gbps = eu_rates(cfg, part)
    return tuple(step_time(s, cfg, clock * 1e6, gbps * 1e9 * cfg.ddr_efficiency) for s in steps)


def estimate_mnisc(steps: tuple[EuStep, ...] | list[EuStep], cfg: EuConfig | None = None,
                   part: str | Part = "xc7z020", model: CostModel | None = None,
                   opts: ArchOptions | None = None) -> MniscEstimate:
    """Per-step cycles, DDR bytes and roofline bound, frames/s and resources of the program on one EU."""
    cfg, opts = cfg or EuConfig(), opts or ArchOptions()
    p, model = get_part(part), model or CostModel.default()
    steps = tuple(steps)
    clock, gbps = eu_rates(cfg, p)
    times = step_times(steps, cfg, p)
    detail = eu_resources(steps, cfg, p, model, opts)
    total = Resources.total(detail.values())
    return MniscEstimate(cfg, p.name, clock, gbps, times, total, detail, total.fits(budget(p, opts)))


# ----------------------------------------------------------------------------- the EU core as the RTL builds it

CORE_COEFFICIENTS = "data/mnisc_coefficients.json"
NF, IREGS = 38, 15  # instruction fields held in registers; address registers of the sequencer (rtl.mnisc)


@dataclass(frozen=True)
class EuWidths:
    """The EU core's widths (the Verilog parameters of :mod:`mixq.rtl.mnisc`, lower case): ``p`` MAC rows of
    ``ww``-bit weights x ``dw``-bit data words into ``accw``-bit accumulators; the shared output pipeline's
    value / multiplier / mid value / multiplier / output value widths, its two products and shift amounts;
    the data, instruction, weight and parameter address widths, the counter and instruction-register widths."""

    p: int = 4
    dw: int = 16
    ww: int = 8
    accw: int = 32
    vw: int = 32
    m1w: int = 16
    qw: int = 16
    m2w: int = 2
    ew: int = 16
    p1w: int = 48
    p2w: int = 18
    nw: int = 6
    asw: int = 1
    aw: int = 20
    iaw: int = 12
    waw: int = 16
    paw: int = 16
    cw: int = 16
    iw: int = 20

    @staticmethod
    def from_params(params: dict[str, int]) -> EuWidths:
        """From the Verilog parameters by name (``EuImage.widths``, upper case)."""
        return EuWidths(**{k.lower(): int(v) for k, v in params.items()})


def core_features(w: EuWidths) -> dict[str, dict[str, dict[str, float]]]:
    """Per term of the core, the structural features its LUTs / FFs are linear in (bits of each structure of
    the generated Verilog, counted from it): ``rows`` the accumulators and the row select feeding the shared
    requantizer (``p * accw``), ``requant`` its six clamps, two barrel shifts and the accumulator shift (LUT)
    or its registers (FF), ``sequencer`` a constant, its address adders / registers (``aw``) and counters
    (``cw``), and for FFs the instruction registers."""
    split = sum((mul_dsps(a, b, y) - 1) * y for a, b, y in ((w.vw, w.m1w, w.p1w), (w.qw, w.m2w, w.p2w))
                if mul_dsps(a, b, y) > 1)
    feats: dict[str, dict[str, dict[str, float]]] = {
        "rows": {"lut": {"rows": w.p * w.accw}, "ff": {"rows": w.p * w.accw}},
        "requant": {"lut": {"rq": 2 * (w.vw + w.qw + w.ew) + (w.p1w + w.p2w) * w.nw + w.vw * w.asw + split},
                    "ff": {"rq": 3 * w.vw + 2 * w.qw + 2 * w.ew + w.m1w + w.m2w + 2 * w.nw}},
        "sequencer": {"lut": {"one": 1.0, "seq": 20 * w.aw + 16 * w.cw},
                      "ff": {"one": 1.0, "seq": IREGS * w.aw + 14 * w.cw + NF * w.iw + 2 * (w.waw + w.paw) + w.iaw}},
    }
    return feats


def core_dsps(w: EuWidths) -> dict[str, int]:
    """DSPs by the yosys rule (:func:`mixq.hw.bits.mul_dsps`): one ``ww x dw`` product per row (at the
    accumulator's width), the requantizer's two products."""
    return {"rows": w.p * mul_dsps(w.ww, w.dw, min(w.accw, w.ww + w.dw)),
            "requant": mul_dsps(w.vw, w.m1w, w.p1w) + mul_dsps(w.qw, w.m2w, w.p2w), "sequencer": 0}


def load_core_coefficients(path: Any = None) -> dict[str, Any]:
    """The fitted core coefficients (``fit_core``), shipped in ``mixq/hw/data/mnisc_coefficients.json``."""
    if path is not None:
        return json.loads(Path(path).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    return _shipped_core_coefficients()


@lru_cache(maxsize=1)
def _shipped_core_coefficients() -> dict[str, Any]:
    try:
        text = ilr.files("mixq.hw").joinpath(CORE_COEFFICIENTS).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise HardwareError("mixq/hw/data/mnisc_coefficients.json is missing; run benchmarks/mnisc_synth.py "
                            "--fit") from e
    return json.loads(text)  # type: ignore[no-any-return]


def core_resources(w: EuWidths, coefficients: dict[str, Any] | None = None) -> dict[str, Resources]:
    """The core's resources by term (``rows``, ``requant``, ``sequencer``) and their ``total``: LUT / FF
    from the fitted coefficients, DSPs by rule; the core has no memory (its memories are outside)."""
    coefs = (coefficients or load_core_coefficients())["coefs"]
    dsps = core_dsps(w)
    out = {}
    for term, feats in core_features(w).items():
        lut, ff = (sum(coefs[r].get(k, 0.0) * v for k, v in feats[r].items()) for r in ("lut", "ff"))
        out[term] = Resources(lut=max(lut, 0.0), ff=max(ff, 0.0), dsp=float(dsps[term]))
    out["total"] = Resources.total(out.values())
    return out


def fit_core(records: list[tuple[EuWidths, dict[str, float]]], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Non-negative least squares of LUT and FF on :func:`core_features` over yosys ``records``
    ``(widths, {"lut": .., "ff": ..})``; the coefficients as data (version 1)."""
    from scipy.optimize import nnls

    coefs: dict[str, dict[str, float]] = {}
    for res in ("lut", "ff"):
        rows = [{k: v for term in core_features(w).values() for k, v in term[res].items()} for w, _ in records]
        names = sorted({k for r in rows for k in r})
        a = np.array([[r.get(k, 0.0) for k in names] for r in rows])
        b = np.array([float(y[res]) for _, y in records])
        x, _ = nnls(a, b)
        coefs[res] = {k: round(float(v), 4) for k, v in zip(names, x, strict=True)}
    return {"version": 1, "meta": {**(meta or {}), "records": len(records)}, "coefs": coefs}


def eu_widths(steps: tuple[EuStep, ...], cfg: EuConfig) -> EuWidths:
    """The core's widths for a program on ``cfg``: rows, lane widths, the widest proven accumulator and output
    pipeline over the steps (their ``acc_bits`` / ``pipe``, else the lanes' accumulator and a 16-bit
    multiplier), and address / counter widths from the program's sizes (the data words an upper bound:
    every tensor at its accumulator's size)."""
    convs = [s for s in steps if not s.is_move]
    acc_len = max(s.row_length for s in convs)
    dw = cfg.data_bits or cfg.abits
    lanes_acc = PeConfig("fixed_dsp", cfg.wbits, dw, 1, acc_len=acc_len).acc_bits
    accw = max((s.acc_bits for s in convs), default=0) or lanes_acc
    default = (accw, REQUANT_MULT_BITS, dw + 1, 2, dw + 1, accw + REQUANT_MULT_BITS, dw + 2, 6, 1)
    vw, m1w, qw, m2w, ew, p1w, p2w, nw, asw = (max(x) for x in zip(*[s.pipe or default for s in convs], strict=True))
    words = math.prod(convs[0].in_shape) + sum(math.prod(s.out_shape) * max(s.outputs, 1) for s in steps)
    weights = sum(s.groups * math.ceil(s.out_shape[0] // s.groups / cfg.p) * s.row_length for s in convs)
    params = 21 * sum(s.out_shape[0] for s in convs)
    cw = max(max(*s.in_shape[1:], *s.out_shape, s.row_length, s.padded_width, s.in_shape[0]) for s in convs)
    aw, waw, paw = max(words - 1, 1).bit_length(), weights.bit_length(), (params + 21).bit_length()
    cw = cw.bit_length() + 1
    return EuWidths(cfg.p, dw, cfg.wbits, accw, vw, m1w, qw, m2w, ew, p1w, p2w, nw, asw, aw=aw,
                    iaw=(40 * (len(steps) + 1)).bit_length(), waw=waw, paw=paw, cw=cw, iw=max(aw, waw, paw, cw))
