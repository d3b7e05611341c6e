"""The single-engine ("mnisc") accelerator: the program as the template sees it, and the EU in Verilog.

:func:`eu_steps` turns a lowered :class:`mixq.engine.program.Program` into the plain-data steps
(:class:`mixq.hw.mnisc.EuStep`) the template prices: ``mixq.engine`` may not import ``mixq.hw`` (nor the
other way round), so the conversion lives here, in the layer above both. Widths come from every tensor's
proven range (:func:`tensor_ranges`: the input format's levels through the weights and the post-ops),
never from data.

    prog = lower(to_integer(qmodel, (3, 1080, 1920)))      # shapes only: any resolution
    est = estimate_mnisc(eu_steps(prog), EuConfig(p=16, s=16, wbits=4, abits=4))

:func:`lower_for` lowers for one EU: a residual add is folded into its operand's conv only where that is no
slower there.

:data:`EU_VERILOG` is the EU with its sequencer: ``P`` MAC rows that share one activation per cycle (s = 1),
an instruction list of 40 words per step (:data:`FIELDS`: shapes, stride, zero insertion as a power of two,
padding, groups, two concatenated inputs, up to two outputs each with a clamp / requant / clamp / requant /
clamp pipeline per row and a 2**k max-pool by read-modify-write, a pixel-shuffle move), memories outside it
(synchronous read). Addresses are counters and incremental sums (no multiplier outside the MAC rows and the
requantizer); every register is as wide as the program needs. :func:`eu_image` compiles a program into the
memory images (data memory map, instructions, weights block by block, per-row parameters) with the Verilog
parameters (:data:`PARAMS`: address and counter widths from the memories and shapes, the accumulator and each
requantizer stage from the proven ranges) and refuses by name what the RTL does not build (concat moves,
dilation, saturating accumulators, padded or odd pools, more than two inputs / outputs / requantizations, a
stride over a zero-inserted input).
:func:`cosimulate_eu` runs the whole program in Icarus and compares every tensor the EU writes with the
integer program's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixq.engine.model import IntModel
from mixq.engine.program import ConvStep, MoveStep, PostOp, Program, Read, StepOutput, lower
from mixq.errors import HardwareError
from mixq.formats import format_from_dict
from mixq.hw.mnisc import CONST_BITS_PER_ROW, EuConfig, EuStep, step_times
from mixq.hw.parts import Part, get_part
from mixq.io import atomic_write_text
from mixq.rtl.cosim import _run
from mixq.rtl.memfile import write_mem

# ----------------------------------------------------------------------------- proven ranges


def _conv_range(step: ConvStep, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output row, the least and greatest accumulator over inputs in ``[lo_c, hi_c]`` per channel
    (Python ints: no overflow)."""
    if step.zero_insert != (1, 1) or any(step.padding) or step.zero_extra != (0, 0):
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    o, cg = step.weight.shape[:2]
    w = step.weight.astype(object).reshape(step.groups, o // step.groups, cg, -1)
    lo_g, hi_g = lo.reshape(step.groups, 1, cg, 1), hi.reshape(step.groups, 1, cg, 1)
    pos, neg = np.where(w > 0, w, 0), np.where(w < 0, w, 0)
    a_lo = (pos * lo_g + neg * hi_g).sum(axis=(2, 3)).reshape(-1)
    a_hi = (pos * hi_g + neg * lo_g).sum(axis=(2, 3)).reshape(-1)
    b = step.bias.astype(object)
    a_lo, a_hi = a_lo * 2**step.acc_shift + b, a_hi * 2**step.acc_shift + b
    if step.acc_bits is not None:
        top = 2 ** (step.acc_bits - 1)
        a_lo, a_hi = np.clip(a_lo, -top, top - 1), np.clip(a_hi, -top, top - 1)
    return a_lo, a_hi


def _per_channel(a: np.ndarray, c: int) -> np.ndarray:
    """An op's array as ``(c, k)`` Python ints: the values each channel sees."""
    a = np.asarray(a)
    if a.ndim and a.shape[0] == c:
        return a.reshape(c, -1).astype(object)
    return np.broadcast_to(a.reshape(1, -1), (c, a.size)).astype(object)


def _op_range(op: PostOp, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel range after a post-op: each is monotone (a max-pool keeps the range)."""
    c = lo.shape[0]
    lo2, hi2 = lo.reshape(c, 1), hi.reshape(c, 1)
    if op.kind == "requant":
        m, n = _per_channel(op.arrays["M"], c), _per_channel(op.arrays["n"], c)
        half = (np.ones_like(n) << n) >> 1
        lo2, hi2 = (lo2 * m + half) >> n, (hi2 * m + half) >> n
        if op.attrs["qmin"] is not None:
            q = (op.attrs["qmin"], op.attrs["qmax"])
            lo2, hi2 = np.clip(lo2, *q), np.clip(hi2, *q)
    elif op.kind == "clamp":
        for key, f in (("lo", np.maximum), ("hi", np.minimum)):
            if key in op.arrays:
                lim = _per_channel(op.arrays[key], c)
                lo2, hi2 = f(lo2, lim), f(hi2, lim)
    return lo2.min(axis=1), hi2.max(axis=1)


def _channel_ranges(prog: Program) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                             dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every stored tensor's proven range per channel, and every conv step's input range per channel."""
    levels = format_from_dict(prog.input_quantizer["fmt"]).int_levels()
    c_in = prog.input.shape[0]
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {
        prog.input.tensor: (np.full(c_in, int(min(levels)), dtype=object),
                            np.full(c_in, int(max(levels)), dtype=object))}
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def channels(r: Read) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = per[r.tensor]
        c = r.shape[0] if len(r.shape) == 3 else int(np.prod(r.shape))
        if lo.shape[0] == c:
            return lo, hi
        return np.full(c, min(lo), dtype=object), np.full(c, max(hi), dtype=object)

    for step in prog.steps:
        parts = [channels(r) for r in step.inputs]
        lo, hi = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if isinstance(step, MoveStep):
            if step.kind == "pixel_shuffle":
                r = int(step.attrs["factor"]) ** 2
                lo, hi = lo.reshape(-1, r).min(1), hi.reshape(-1, r).max(1)
            per[step.name] = (lo, hi)
            continue
        if lo.shape[0] != step.in_shape[0]:  # a flattened input read as (F, 1, 1)
            lo, hi = np.full(step.in_shape[0], min(lo), dtype=object), np.full(step.in_shape[0], max(hi), dtype=object)
        inputs[step.name] = (lo, hi)
        a_lo, a_hi = _conv_range(step, lo, hi)
        for out in step.outputs:
            o_lo, o_hi = a_lo, a_hi
            for op in out.ops:
                o_lo, o_hi = _op_range(op, o_lo, o_hi)
            per[out.name] = (o_lo, o_hi)
    return per, inputs


def tensor_ranges(prog: Program) -> dict[str, tuple[int, int]]:
    """Every stored tensor's proven ``(least, greatest)`` value, from the input format's range and the
    weights (never from data); per-channel limits are taken per channel and then over the tensor."""
    return {k: (int(min(v[0])), int(max(v[1]))) for k, v in _channel_ranges(prog)[0].items()}


def range_bits(lo: int, hi: int) -> int:
    """Bits of a register holding ``[lo, hi]``: unsigned when ``lo >= 0``, else two's complement."""
    if lo >= 0:
        return max(int(hi).bit_length(), 1)
    return max(int(-lo - 1).bit_length(), int(hi).bit_length()) + 1


def _bits(rng: dict[str, tuple[int, int]], name: str) -> int:
    return range_bits(*rng[name])


def _signed_bits(a: np.ndarray) -> int:
    return range_bits(int(a.min(initial=0)), int(a.max(initial=0)))


def _eu_step(step: ConvStep | MoveStep, rng: dict[str, tuple[int, int]],
             inputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> EuStep:
    read = sum(math.prod(r.shape) * _bits(rng, r.tensor) for r in step.inputs)
    in_bits = max(_bits(rng, r.tensor) for r in step.inputs)
    if isinstance(step, MoveStep):
        c, h, w = step.shape
        return EuStep(step.name, step.kind, (c, h, w), (c, h, w), in_bits=in_bits, wbits=0, read_bits=read,
                      write_bits=math.prod(step.shape) * _bits(rng, step.name))
    c, h, w = step.in_shape
    (_, zw), (_, ew), (_, _, le, r) = step.zero_insert, step.zero_extra, step.padding
    wbits = _signed_bits(step.weight)
    o = int(step.weight.shape[0])
    acc, pipe = _pipe(step, inputs[step.name])
    return EuStep(
        step.name, step.kind, (c, h, w), tuple(int(d) for d in step.acc_shape),  # type: ignore[arg-type]
        kernel=(int(step.weight.shape[2]), int(step.weight.shape[3])), groups=step.groups, zero_insert=step.zero_insert,
        padded_width=(w - 1) * zw + 1 + ew + le + r, in_bits=in_bits, wbits=wbits, read_bits=read,
        write_bits=sum(math.prod(out.shape) * _bits(rng, out.name) for out in step.outputs),
        weight_bits=int(step.weight.size) * wbits + o * CONST_BITS_PER_ROW * len(step.outputs),
        outputs=len(step.outputs), pooled=any(op.kind == "maxpool" for out in step.outputs for op in out.ops),
        acc_bits=acc, pipe=pipe)


def _pipe(step: ConvStep, inputs: tuple[np.ndarray, np.ndarray]) -> tuple[int, tuple[int, ...]]:
    """The step's proven accumulator and output-pipeline widths as :class:`EuStep` carries them (none where
    the RTL's fixed pipeline cannot hold the step's outputs)."""
    try:
        wid = _step_widths(step, [_chain(out, int(step.weight.shape[0]), step.name) for out in step.outputs], inputs)
    except HardwareError:
        return 0, ()
    return wid["ACCW"], tuple(wid[k] for k in PIPE)


def eu_steps(prog: Program) -> tuple[EuStep, ...]:
    """The program's steps as the template sees them: shapes, code widths, bits read and written."""
    per, inputs = _channel_ranges(prog)
    rng = {k: (int(min(v[0])), int(max(v[1]))) for k, v in per.items()}
    return tuple(_eu_step(s, rng, inputs) for s in prog.steps)


def lower_for(im: IntModel, cfg: EuConfig | None = None, part: str | Part = "xc7z020") -> Program:
    """The program of ``im`` for this EU: each residual add folded into the conv that makes its operand (one step,
    the conv's weights times the add's multiplier) only where that step is no slower on the EU than the conv and a
    separate 1x1 add step (:func:`mixq.hw.mnisc.step_times`: cycles with the bit-sliced passes of wider codes, DDR
    bytes with the accumulator written and read back). The fold widens the weights: with exact residual streams a
    ResNet's fused steps carry 26-31-bit weights, dozens of passes on 4-bit lanes. Exact either way."""
    cfg, p = cfg or EuConfig(), get_part(part)
    fused, apart = lower(im), lower(im, fuse=lambda _: False)

    def seconds(prog: Program) -> dict[str, float]:
        return {t.name: t.seconds for t in step_times(eu_steps(prog), cfg, p)}

    tf, ta = seconds(fused), seconds(apart)
    folds = [st for st in fused.conv_steps() if st.kind == "add" and len(st.source) > 1]
    keep = {st.name for st in folds if tf[st.name] <= ta[st.name] + sum(ta.get(n, 0.0) for n in st.source[:-1])}
    if not keep:  # one of the two programs already lowered is the one ``keep`` gives
        return apart
    return fused if len(keep) == len(folds) else lower(im, fuse=keep.__contains__)


def step_counts(prog: Program, computed: Mapping[str, Sequence[int]]) -> dict[str, list[tuple[int, int]]]:
    """Per image, ``(active input channels, computed output channels)`` of every conv and add step of ``prog``
    when each step named in ``computed`` (a gated conv: per image, how many of its output channels it
    computes) writes only that many nonzero channels — the counts :func:`mixq.hw.dynamic.dynamic_mnisc`
    prices. A step's active inputs are the active channels of the tensors it reads (a gated step's outputs:
    its computed channels; a concat move's: its inputs'; the network input and every other step's outputs: all
    their channels), so a step that carries a fused residual add skips the suppressed channels of its conv's
    input too. Linear steps (flattened inputs) are left out: priced dense."""
    frames = {len(v) for v in computed.values()}
    if len(frames) != 1:
        raise HardwareError("mnisc: step_counts needs the same number of images for every gated step")
    n = frames.pop()
    names = {st.name for st in prog.steps}
    for g in computed:
        if g not in names:
            raise HardwareError(f"mnisc: step_counts: {g!r} is not a step of the program")
    active: dict[str, list[int]] = {prog.input.tensor: [int(prog.input.shape[0])] * n}
    out: dict[str, list[tuple[int, int]]] = {}
    for st in prog.steps:
        reads = [active.get(r.tensor, [int(r.shape[0])] * n) for r in st.inputs]
        a_in = [sum(col) for col in zip(*reads, strict=True)]
        if isinstance(st, MoveStep):
            width = [a if st.kind == "concat" else int(st.shape[0]) for a in a_in]
            active[st.name] = width
            continue
        o = int(st.weight.shape[0])
        a_out = [int(v) for v in computed[st.name]] if st.name in computed else [o] * n
        for output in st.outputs:
            active[output.name] = a_out
        if st.kind in ("conv", "add"):
            out[st.name] = list(zip(a_in, a_out, strict=True))
    return out


# ----------------------------------------------------------------------------- the EU in Verilog

NPRM = 21  # words per output row: bias, then per output chain lo_a, hi_a, M1, n1, lo_b, hi_b, M2, n2, lo_c, hi_c
INSTR_WORDS = 40
FIELDS = ("kind", "c", "h", "w", "o", "ho", "wo", "kh", "kw", "sh", "sw", "zsh", "zsw", "pt", "pl", "cg", "rpg",
          "in0", "c0", "in1", "wb", "pb", "nout", "ob0", "ob1", "ps0", "ps1", "hp", "wp", "ash", "hw", "howo",
          "lg", "shw", "rb0", "hpwp", "rrhw", "rhw")
KINDS = {"conv": 0, "pixel_shuffle": 1, "end": 15}
UNBOUNDED = 1 << 62
#: The EU's Verilog parameters (:data:`EU_VERILOG`): rows, data / weight / accumulator widths, the output
#: pipeline's widths (value, first multiplier, mid value, second multiplier, output value, the two products,
#: shift amounts, accumulator shift), address widths (data, instruction, weight, parameter memories),
#: counter width and instruction-register width.
PIPE = ("VW", "M1W", "QW", "M2W", "EW", "P1W", "P2W", "NW", "ASW")  # the order of EuStep.pipe / EuWidths
PARAMS = ("P", "DW", "WW", "ACCW", "VW", "M1W", "QW", "M2W", "EW", "P1W", "P2W", "NW", "ASW", "AW", "IAW", "WAW",
          "PAW", "CW", "IW")


@dataclass(frozen=True)
class EuImage:
    """The memory images of one program on the RTL EU: instructions (:data:`INSTR_WORDS` 32-bit words per
    step), weights (``p`` lanes per word), per-row parameters (64-bit), the data memory map, and the
    Verilog parameters (:data:`PARAMS`) sized to the program's proven ranges and memories."""

    p: int
    ww: int
    dw: int
    instr: list[int]
    weights: list[int]
    params: list[int]
    tensors: dict[str, tuple[int, tuple[int, ...]]]  # name -> (base address, shape)
    data_words: int
    widths: dict[str, int] = field(default_factory=dict)


def _log2(v: int, what: str) -> int:
    if v < 1 or v & (v - 1):
        raise HardwareError(f"mnisc rtl: {what} = {v} is not a power of two")
    return v.bit_length() - 1


def _chain(out: StepOutput, c: int, step: str) -> tuple[list[np.ndarray], int]:
    """An output chain as the EU's fixed pipeline, per row: clamp, requant, clamp, requant, clamp, and a
    max-pool (``2**ps``, stride = kernel) applied last (exact: every elementwise op is non-decreasing, so it
    commutes with the max). Clamps in a row intersect."""
    stages: list[list[np.ndarray]] = [[np.full(c, -UNBOUNDED, dtype=object), np.full(c, UNBOUNDED, dtype=object)]]
    rqs: list[list[np.ndarray]] = []
    ps = 0
    for op in out.ops:
        if op.kind == "maxpool":
            a = op.attrs
            k = list(a["kernel"])
            if (k[0] != k[1] or list(a["stride"]) != k or any(a["padding"]) or any(d != 1 for d in a["dilation"])
                    or a["ceil_mode"] or ps):
                raise HardwareError(f"mnisc rtl: step {step!r}: only one k x k max-pool of stride k, no padding")
            ps = _log2(k[0], f"step {step!r} pool kernel")
        elif op.kind == "requant":
            if len(rqs) == 2:
                raise HardwareError(f"mnisc rtl: step {step!r}: more than two requantizations in one output")
            rqs.append([_per_channel(op.arrays[k], c).reshape(-1) for k in ("M", "n")])
            lo, hi = op.attrs["qmin"], op.attrs["qmax"]
            stages.append([np.full(c, -UNBOUNDED if lo is None else lo, dtype=object),
                           np.full(c, UNBOUNDED if hi is None else hi, dtype=object)])
        else:
            lim = stages[-1]
            for i, (key, f) in enumerate((("lo", np.maximum), ("hi", np.minimum))):
                if key in op.arrays:
                    lim[i] = f(lim[i], _per_channel(op.arrays[key], c).reshape(-1))
            if (lim[0] > lim[1]).any():
                raise HardwareError(f"mnisc rtl: step {step!r}: clamps with an empty range")
    while len(rqs) < 2:  # the identity: M = 1, n = 0, unbounded
        rqs.append([np.ones(c, dtype=object), np.zeros(c, dtype=object)])
        stages.append([np.full(c, -UNBOUNDED, dtype=object), np.full(c, UNBOUNDED, dtype=object)])
    return [*stages[0], *rqs[0], *stages[1], *rqs[1], *stages[2]], ps


def _twos(v: int, bits: int) -> int:
    if not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
        raise HardwareError(f"mnisc rtl: value {v} does not fit {bits} signed bits")
    return v & ((1 << bits) - 1)


def _sbits(*ranges: tuple[np.ndarray, np.ndarray]) -> int:
    """Two's-complement bits holding every ``(lo, hi)`` range (arrays of Python ints)."""
    return range_bits(min(min(int(lo.min()), -1) for lo, _ in ranges), max(max(int(hi.max()), 0) for _, hi in ranges))


def _pipeline_widths(v: tuple[np.ndarray, np.ndarray], arrays: list[np.ndarray]) -> dict[str, int]:
    """The widths one output chain needs, per stage, from the accumulator's proven range ``v`` (after
    shift and bias) and the chain's per-row constants: every intermediate value of the pipeline fits."""
    lo_a, hi_a, m1, n1, lo_b, hi_b, m2, n2, lo_c, hi_c = arrays

    def clip(r: tuple[np.ndarray, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(np.maximum(r[0], lo), hi), np.minimum(np.maximum(r[1], lo), hi)

    def mul(r: tuple[np.ndarray, np.ndarray], m: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = (np.ones_like(n) << n) >> 1
        a, b = r[0] * m + half, r[1] * m + half
        return np.minimum(a, b), np.maximum(a, b)

    ca = clip(v, lo_a, hi_a)
    p1 = mul(ca, m1, n1)
    q1 = (p1[0] >> n1, p1[1] >> n1)
    cb = clip(q1, lo_b, hi_b)
    p2 = mul(cb, m2, n2)
    q2 = (p2[0] >> n2, p2[1] >> n2)
    e = clip(q2, lo_c, hi_c)
    return {"VW": _sbits(v, ca), "P1W": _sbits(p1), "QW": _sbits(q1, cb), "P2W": _sbits(p2), "EW": _sbits(q2, e),
            "M1W": _sbits((m1, m1)), "M2W": _sbits((m2, m2)),
            "NW": max(int(max(n1.max(), n2.max())).bit_length(), 1)}


def _acc_range(step: ConvStep, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the range of the raw accumulator and of every partial sum (zero taps included) over inputs
    in ``[lo_c, hi_c]`` per channel."""
    o, cg = step.weight.shape[:2]
    w = step.weight.astype(object).reshape(step.groups, o // step.groups, cg, -1)
    lo_g = np.minimum(lo, 0).reshape(step.groups, 1, cg, 1)
    hi_g = np.maximum(hi, 0).reshape(step.groups, 1, cg, 1)
    pos, neg = np.where(w > 0, w, 0), np.where(w < 0, w, 0)
    a_lo, a_hi = (pos * lo_g + neg * hi_g).sum(axis=(2, 3)), (pos * hi_g + neg * lo_g).sum(axis=(2, 3))
    return a_lo.reshape(-1), a_hi.reshape(-1)


def _step_widths(step: ConvStep, chains: list[tuple[list[np.ndarray], int]],
                 inputs: tuple[np.ndarray, np.ndarray]) -> dict[str, int]:
    """A conv step's widths: the accumulator over the inputs' proven range per channel, then every stage of
    every output chain (:func:`_pipeline_widths`)."""
    acc = _acc_range(step, *inputs)
    bias = step.bias.astype(object).reshape(-1)
    v = (acc[0] * 2**step.acc_shift + bias, acc[1] * 2**step.acc_shift + bias)
    wid = {"ACCW": _sbits(acc), "ASW": max(int(step.acc_shift).bit_length(), 1)}
    for arrays, _ in chains:
        for k, bits in _pipeline_widths(v, arrays).items():
            wid[k] = max(wid.get(k, 0), bits)
    return wid


def _saturate(a: np.ndarray, bits: int) -> np.ndarray:
    """A clamp limit saturated to a ``bits``-bit register: the same clamp of every value the register holds."""
    top = 1 << (bits - 1)
    return np.minimum(np.maximum(a, -top), top - 1)


def eu_image(prog: Program, p: int = 4, ww: int = 32, dw: int = 32) -> EuImage:
    """Compile a program for the RTL EU (:data:`EU_VERILOG`): data memory map, instruction list, weights
    laid out block by block (``p`` rows of one group share the activation), per-row parameters, and the
    Verilog parameters sized to the proven ranges (:func:`tensor_ranges`) and the memories."""
    per, step_inputs = _channel_ranges(prog)
    rng = {k: (int(min(v[0])), int(max(v[1]))) for k, v in per.items()}
    for name, (lo, hi) in rng.items():
        if range_bits(min(lo, -1), hi) > dw:  # the data memory holds two's complement words
            raise HardwareError(f"mnisc rtl: tensor {name!r} needs {range_bits(min(lo, -1), hi)} signed bits, the "
                                f"data memory {dw}")
    tensors: dict[str, tuple[int, tuple[int, ...]]] = {}
    top = 0

    def alloc(name: str, shape: tuple[int, ...]) -> int:
        nonlocal top
        tensors[name] = (top, shape)
        top += math.prod(shape)
        return tensors[name][0]

    alloc(prog.input.tensor, prog.input.shape)
    steps: list[dict[str, int]] = []
    convs: list[tuple[ConvStep, list[tuple[list[np.ndarray], int]]]] = []
    weights: list[int] = []
    wid = {"ACCW": 2, "VW": 2, "M1W": 2, "QW": 2, "M2W": 2, "EW": 2, "P1W": 2, "P2W": 2, "NW": 1, "ASW": 1, "CW": 1}
    for step in prog.steps:
        f = dict.fromkeys(FIELDS, 0)
        if isinstance(step, MoveStep):
            if step.kind != "pixel_shuffle":
                raise HardwareError(f"mnisc rtl: step {step.name!r}: a {step.kind} move is not in the RTL")
            (read,) = step.inputs
            c, h, w = read.shape
            o, ho, wo = step.shape
            z = _log2(int(step.attrs["factor"]), f"step {step.name!r} factor")
            f.update(kind=KINDS["pixel_shuffle"], c=c, h=h, w=w, o=o, ho=ho, wo=wo, hw=h * w, howo=ho * wo, zsh=z,
                     in0=tensors[read.tensor][0], ob0=alloc(step.name, step.shape), rhw=h * w << z,
                     rrhw=h * w << 2 * z)
            steps.append(f)
            continue
        if step.dilation != (1, 1) or step.acc_bits is not None or len(step.inputs) > 2 or len(step.outputs) > 2:
            raise HardwareError(f"mnisc rtl: step {step.name!r}: dilation, saturation, more than two inputs or "
                                "outputs are not in the RTL")
        if (step.stride[0] > 1 and step.zero_insert[0] > 1) or (step.stride[1] > 1 and step.zero_insert[1] > 1):
            raise HardwareError(f"mnisc rtl: step {step.name!r}: a stride over a zero-inserted input is not in the "
                                "RTL (its address generator steps one stored row at a time)")
        c, h, w = step.in_shape
        o, ho, wo = step.acc_shape
        t, b, le, r = step.padding
        kh, kw = int(step.weight.shape[2]), int(step.weight.shape[3])
        reads = [tensors[rd.tensor][0] for rd in step.inputs]
        chains = [_chain(out, o, step.name) for out in step.outputs]
        pooled = {ps for _, ps in chains if ps}
        if len(pooled) > 1:
            raise HardwareError(f"mnisc rtl: step {step.name!r}: two outputs pooled by different kernels")
        hp, wp = (ho >> min(pooled), wo >> min(pooled)) if pooled else (0, 0)
        zh, zw = step.zero_insert
        zsh = _log2(zh, "zero insertion")
        f.update(kind=KINDS["conv"], c=c, h=h, w=w, o=o, ho=ho, wo=wo, kh=kh, kw=kw, sh=step.stride[0],
                 sw=step.stride[1], zsh=zsh, zsw=_log2(zw, "zero insertion"), pt=t, pl=le, cg=c // step.groups,
                 rpg=o // step.groups, in0=reads[0], c0=step.inputs[0].shape[0] if len(reads) > 1 else c,
                 in1=reads[-1], wb=len(weights), pb=NPRM * sum(int(s.weight.shape[0]) for s, _ in convs),
                 nout=len(step.outputs), ps0=chains[0][1], ps1=chains[-1][1], hp=hp,
                 wp=wp, ash=step.acc_shift, hw=h * w, howo=ho * wo, lg=c // step.groups * kh * kw,
                 shw=step.stride[0] * w, rb0=((-t) >> zsh) * w, hpwp=hp * wp)
        for j, out in enumerate(step.outputs):
            f[f"ob{j}"] = alloc(out.name, out.shape)
        if len(step.outputs) == 1:
            f["ob1"] = f["ob0"]
        steps.append(f)
        convs.append((step, chains))
        rpg, wflat = o // step.groups, step.weight.reshape(o, -1)
        for g in range(step.groups):
            for o0 in range(0, rpg, p):
                rows = range(g * rpg + o0, g * rpg + min(o0 + p, rpg))
                for tap in range(wflat.shape[1]):
                    weights.append(sum(_twos(int(wflat[r, tap]), ww) << (ww * i) for i, r in enumerate(rows)))
        for k, bits in _step_widths(step, chains, step_inputs[step.name]).items():
            wid[k] = max(wid[k], bits)
        span = max((ho - 1) * step.stride[0] + kh + t + b, (wo - 1) * step.stride[1] + kw + le + r)
        wid["CW"] = max(wid["CW"], span.bit_length(), *(int(f[k]).bit_length() for k in (
            "h", "w", "o", "ho", "wo", "lg", "cg", "rpg", "c0", "hp", "wp", "pt", "pl", "sh", "sw")))
    params: list[int] = []
    for step, chains in convs:
        o = step.weight.shape[0]
        for r in range(o):
            row = [int(step.bias[r])]
            for j in range(2):
                arrays, _ = chains[min(j, len(chains) - 1)]  # 10 words per chain, limits saturated to the registers
                lims = {0: "VW", 1: "VW", 4: "QW", 5: "QW", 8: "EW", 9: "EW"}
                row += [int(_saturate(a, wid[lims[i]])[r]) if i in lims else int(a[r]) for i, a in enumerate(arrays)]
            params += [_twos(v, 64) for v in row]
    steps.append({**dict.fromkeys(FIELDS, 0), "kind": KINDS["end"]})
    wid["CW"] += 1  # the counters step one past their ends
    aw = max(top - 1, 1).bit_length()
    wid.update(P=p, DW=dw, WW=ww, AW=aw, IAW=(len(steps) * INSTR_WORDS).bit_length(),
               WAW=max(len(weights), 1).bit_length(), PAW=(len(params) + NPRM).bit_length())
    wid["IW"] = max(wid["AW"], wid["WAW"], wid["PAW"], wid["CW"])
    instr: list[int] = []
    for f in steps:
        f["rb0"] &= (1 << aw) - 1  # a negative first row (padding over zero insertion): modulo the address width
        bad = [k for k, val in f.items() if not 0 <= val < 1 << wid["IW"]]
        if bad:
            raise HardwareError(f"mnisc rtl: instruction fields {bad} do not fit {wid['IW']} bits")
        instr += [f[k] for k in FIELDS] + [0] * (INSTR_WORDS - len(FIELDS))
    return EuImage(p, ww, dw, instr, weights, params, tensors, top, {k: wid[k] for k in PARAMS})


#: The EU: ``P`` MAC rows sharing one activation per cycle (``s = 1``), a sequencer running the instruction
#: list (:data:`INSTR_WORDS` words per step; fields :data:`FIELDS`), memories outside (synchronous read, one
#: cycle). Every address is a counter or an incremental sum (no multiplier outside the MAC rows and the
#: requantizer), counters and addresses are as wide as the program's memories and shapes need, and the output
#: pipeline's registers as wide as its proven ranges (:func:`eu_image` sizes them, :func:`eu_verilog` sets them).
EU_VERILOG = """module mnisc_core #(parameter P = 4, DW = 32, WW = 32, ACCW = 48, VW = 64, M1W = 64, QW = 64,
                    M2W = 64, EW = 64, P1W = 128, P2W = 128, NW = 6, ASW = 5, AW = 20, IAW = 12, WAW = 16,
                    PAW = 16, CW = 16, IW = 20) (
  input clk, input rst, output reg done,
  output [IAW-1:0] i_addr, input [31:0] i_q,
  output [WAW-1:0] w_addr, input [P*WW-1:0] w_q,
  output [PAW-1:0] p_addr, input signed [63:0] p_q,
  output reg [AW-1:0] d_raddr, input signed [DW-1:0] d_q,
  output reg d_we, output reg [AW-1:0] d_waddr, output reg signed [DW-1:0] d_wdata
);
  localparam F_KIND=0, F_C=1, F_H=2, F_W=3, F_O=4, F_HO=5, F_WO=6, F_KH=7, F_KW=8, F_SH=9, F_SW=10, F_ZSH=11,
             F_ZSW=12, F_PT=13, F_PL=14, F_CG=15, F_RPG=16, F_IN0=17, F_C0=18, F_IN1=19, F_WB=20, F_PB=21,
             F_NOUT=22, F_OB0=23, F_OB1=24, F_PS0=25, F_PS1=26, F_HP=27, F_WP=28, F_ASH=29, F_HW=30, F_HOWO=31,
             F_LG=32, F_SHW=33, F_RB0=34, F_HPWP=35, F_RRHW=36, F_RHW=37, NF=38, IWORDS=40;
  localparam S_FETCH=0, S_DEC=1, S_MAC=2, S_DRAIN=3, S_PREAD=4, S_CHAIN=5, S_RMW=6, S_NEXT=7, S_MVRD=8,
             S_MVWR=9, S_DONE=10;
  localparam NPRM = 21, PIW = $clog2(P) + 1;
  reg [3:0] st;
  reg [IW-1:0] ir [0:NF-1];
  reg [IAW-1:0] ibase;
  reg [5:0] fk;
  reg [4:0] pk;
  reg [CW-1:0] o0, og, nb, y, x, c, ky, kx, t, mc, chn, gchn;
  reg [PIW-1:0] pidx;
  reg signed [CW:0] iy0, ix0;
  reg [AW-1:0] caddr, gaddr, raddr, rbase, pixoff, prow, ra0, ra1, blk0, blk1, mvb, xo, yo, srow, dcnt;
  reg [WAW-1:0] waddr, wrow;
  reg [PAW-1:0] pbase, pblk;
  reg ch, v1, a1, pv;
  reg signed [ACCW-1:0] acc [0:P-1];
  reg signed [VW-1:0] bias, lo_a, hi_a;
  reg signed [M1W-1:0] m1;
  reg signed [QW-1:0] lo_b, hi_b;
  reg signed [M2W-1:0] m2;
  reg signed [EW-1:0] lo_c, hi_c;
  reg [NW-1:0] n1, n2;
  wire signed [127:0] pq = p_q;  // a parameter word, sign-extended to the widest register
  integer p;

  // ---- tap address: counters and incremental addresses (zero insertion, padding, two concatenated inputs)
  wire [CW-1:0] H = ir[F_H], W = ir[F_W], KH = ir[F_KH], KW = ir[F_KW], ZSH = ir[F_ZSH], ZSW = ir[F_ZSW];
  wire signed [CW:0] iy = iy0 + $signed({1'b0, ky}), ix = ix0 + $signed({1'b0, kx});
  wire signed [CW:0] zmh = (1 << ZSH) - 1, zmw = (1 << ZSW) - 1;
  wire signed [CW:0] ry = iy >>> ZSH, rx = ix >>> ZSW;
  wire tap_ok = !iy[CW] && !ix[CW] && (iy & zmh) == 0 && (ix & zmw) == 0 && ry < $signed({1'b0, H})
                && rx < $signed({1'b0, W});
  wire signed [AW-1:0] rxa = rx;
  wire [AW-1:0] tap_addr = caddr + raddr + rxa;
  wire row_step = ((iy + 1) & zmh) == 0;        // the next tap row is the next stored row
  wire out_row_step = ((iy0 + 1) & zmh) == 0;   // the next output row's first tap row (stride 1 when zero-inserted)
  wire last_tap = t == ir[F_LG] - 1;
  assign w_addr = waddr;

  // ---- output pipeline of row pidx, chain ch: clamp, requant (round half up), clamp, requant, clamp; max-pool
  wire signed [ACCW-1:0] asel = acc[pidx];
  wire signed [VW-1:0] v = ($signed(asel) <<< ir[F_ASH][ASW-1:0]) + bias;
  wire signed [VW-1:0] ca = v < lo_a ? lo_a : (v > hi_a ? hi_a : v);
  wire signed [P1W-1:0] half1 = n1 == 0 ? 0 : $signed({{(P1W-1){1'b0}}, 1'b1} << (n1 - 1));
  wire signed [P2W-1:0] half2 = n2 == 0 ? 0 : $signed({{(P2W-1){1'b0}}, 1'b1} << (n2 - 1));
  wire signed [P1W-1:0] prod1 = ca * m1 + half1;
  wire signed [QW-1:0] rq1 = prod1 >>> n1;
  wire signed [QW-1:0] cb = rq1 < lo_b ? lo_b : (rq1 > hi_b ? hi_b : rq1);
  wire signed [P2W-1:0] prod2 = cb * m2 + half2;
  wire signed [EW-1:0] rq2 = prod2 >>> n2;
  wire signed [EW-1:0] e = rq2 < lo_c ? lo_c : (rq2 > hi_c ? hi_c : rq2);
  wire signed [DW-1:0] ed = e;
  wire [CW-1:0] ps = ch ? ir[F_PS1] : ir[F_PS0];
  wire [CW-1:0] psx = ir[F_PS0] | ir[F_PS1];
  wire [CW-1:0] pmask = (1 << ps) - 1, pmaskx = (1 << psx) - 1;
  wire [CW-1:0] py = y >> ps, px = x >> ps;
  wire pvalid = py < ir[F_HP] && px < ir[F_WP];
  wire first = (y & pmask) == 0 && (x & pmask) == 0;
  wire [AW-1:0] out_addr = (ch ? ra1 : ra0) + (ps == 0 ? pixoff : prow + px);
  wire signed [DW-1:0] pooled = first ? ed : (ed > d_q ? ed : d_q);
  wire [AW-1:0] plane0 = ir[F_PS0] == 0 ? ir[F_HOWO] : ir[F_HPWP];
  wire [AW-1:0] plane1 = ir[F_PS1] == 0 ? ir[F_HOWO] : ir[F_HPWP];
  wire [PAW-1:0] pend = ch ? NPRM : 11;
  assign p_addr = pbase + pk;
  wire [4:0] pw = pk - 1;
  wire [4:0] pf = pw > 10 ? pw - 10 : pw;

  // ---- pixel shuffle move: output (mc, y, x) <- input (mc*r*r + (y%r)*r + x%r, y/r, x/r), r = 2**ZSH
  wire [CW-1:0] rmask = (1 << ZSH) - 1;
  wire [AW-1:0] mv_src = mvb + yo + xo + srow + (x >> ZSH);
  assign i_addr = ibase + fk;

  always @* begin
    d_raddr = st == S_MAC ? tap_addr : (st == S_MVRD ? mv_src : out_addr);
    d_we = 0; d_waddr = out_addr; d_wdata = ed;
    if (st == S_CHAIN && ps == 0) d_we = 1;
    if (st == S_RMW && pvalid) begin d_we = 1; d_wdata = pooled; end
    if (st == S_MVWR) begin d_we = 1; d_waddr = dcnt; d_wdata = d_q; end
  end

  always @(posedge clk) begin
    if (rst) begin
      st <= S_FETCH; ibase <= 0; fk <= 0; done <= 0; a1 <= 0;
    end else case (st)
      S_FETCH: begin
        if (fk != 0 && fk <= NF) ir[fk - 1] <= i_q[IW-1:0];
        fk <= fk + 1;
        if (fk == IWORDS) begin fk <= 0; st <= S_DEC; end
      end
      S_DEC: begin
        o0 <= 0; og <= 0; y <= 0; x <= 0; c <= 0; ky <= 0; kx <= 0; t <= 0; mc <= 0; chn <= 0; gchn <= 0;
        iy0 <= -$signed({1'b0, ir[F_PT][CW-1:0]}); ix0 <= -$signed({1'b0, ir[F_PL][CW-1:0]});
        caddr <= ir[F_IN0]; gaddr <= ir[F_IN0]; rbase <= ir[F_RB0]; raddr <= ir[F_RB0];
        waddr <= ir[F_WB]; wrow <= ir[F_WB]; pbase <= ir[F_PB]; pblk <= ir[F_PB];
        ra0 <= ir[F_OB0]; blk0 <= ir[F_OB0]; ra1 <= ir[F_OB1]; blk1 <= ir[F_OB1]; pixoff <= 0; prow <= 0;
        mvb <= ir[F_IN0]; xo <= 0; yo <= 0; srow <= 0; dcnt <= ir[F_OB0];
        a1 <= 0; nb <= ir[F_RPG] < P ? ir[F_RPG] : P;
        for (p = 0; p < P; p = p + 1) acc[p] <= 0;
        st <= ir[F_KIND] == 0 ? S_MAC : (ir[F_KIND] == 1 ? S_MVRD : S_DONE);
      end
      S_MAC, S_DRAIN: begin
        if (a1 && v1)
          for (p = 0; p < P; p = p + 1) acc[p] <= acc[p] + $signed(w_q[p*WW +: WW]) * d_q;
        v1 <= tap_ok; a1 <= st == S_MAC;
        if (st == S_DRAIN) begin st <= S_PREAD; pidx <= 0; pk <= 0; pv <= 0; ch <= 0; end
        else begin
          t <= t + 1; waddr <= waddr + 1;
          if (kx + 1 < KW) kx <= kx + 1;
          else begin
            kx <= 0;
            if (ky + 1 < KH) begin ky <= ky + 1; if (row_step) raddr <= raddr + W; end
            else begin
              ky <= 0; c <= c + 1; raddr <= rbase; chn <= chn + 1;
              caddr <= chn + 1 == ir[F_C0] ? ir[F_IN1] : caddr + ir[F_HW];
            end
          end
          if (last_tap) st <= S_DRAIN;
        end
      end
      S_PREAD: begin
        pv <= 1; pk <= pk + 1;
        if (pv) case (pf)
          0: bias <= pq[VW-1:0];
          1: lo_a <= pq[VW-1:0];  2: hi_a <= pq[VW-1:0];  3: m1 <= pq[M1W-1:0];  4: n1 <= pq[NW-1:0];
          5: lo_b <= pq[QW-1:0];  6: hi_b <= pq[QW-1:0];  7: m2 <= pq[M2W-1:0];  8: n2 <= pq[NW-1:0];
          9: lo_c <= pq[EW-1:0];  default: hi_c <= pq[EW-1:0];
        endcase
        if (pk == pend) st <= S_CHAIN;
      end
      S_CHAIN, S_RMW: begin
        if (st == S_CHAIN && ps != 0) st <= S_RMW;
        else if (!ch && ir[F_NOUT] > 1) begin ch <= 1; pk <= 11; pv <= 0; st <= S_PREAD; end
        else if (pidx + 1 < nb) begin
          pidx <= pidx + 1; pk <= 0; pv <= 0; ch <= 0; st <= S_PREAD;
          pbase <= pbase + NPRM; ra0 <= ra0 + plane0; ra1 <= ra1 + plane1;
        end
        else st <= S_NEXT;
      end
      S_NEXT: begin
        for (p = 0; p < P; p = p + 1) acc[p] <= 0;
        c <= 0; ky <= 0; kx <= 0; t <= 0; a1 <= 0; st <= S_MAC;
        chn <= gchn; caddr <= gaddr; raddr <= rbase; waddr <= wrow; pbase <= pblk; ra0 <= blk0; ra1 <= blk1;
        if (x + 1 < ir[F_WO]) begin
          x <= x + 1; ix0 <= ix0 + $signed({1'b0, ir[F_SW][CW-1:0]}); pixoff <= pixoff + 1;
        end
        else begin
          x <= 0; ix0 <= -$signed({1'b0, ir[F_PL][CW-1:0]});
          if (y + 1 < ir[F_HO]) begin
            y <= y + 1; iy0 <= iy0 + $signed({1'b0, ir[F_SH][CW-1:0]}); pixoff <= pixoff + 1;
            if (out_row_step) begin rbase <= rbase + ir[F_SHW]; raddr <= rbase + ir[F_SHW]; end
            if (((y + 1) & pmaskx) == 0) prow <= prow + ir[F_WP];
          end
          else begin
            y <= 0; iy0 <= -$signed({1'b0, ir[F_PT][CW-1:0]}); pixoff <= 0; prow <= 0;
            rbase <= ir[F_RB0]; raddr <= ir[F_RB0];
            wrow <= wrow + ir[F_LG]; waddr <= wrow + ir[F_LG];
            pblk <= pbase + NPRM; pbase <= pbase + NPRM;
            blk0 <= ra0 + plane0; ra0 <= ra0 + plane0; blk1 <= ra1 + plane1; ra1 <= ra1 + plane1;
            if (o0 + nb >= ir[F_O]) begin ibase <= ibase + IWORDS; st <= S_FETCH; end
            else begin
              o0 <= o0 + nb;
              if (og + nb >= ir[F_RPG]) begin
                og <= 0; gchn <= chn; gaddr <= caddr; chn <= chn; caddr <= caddr;
                nb <= ir[F_RPG] < P ? ir[F_RPG] : P;
              end
              else begin og <= og + nb; nb <= (ir[F_RPG] - og - nb) < P ? ir[F_RPG] - og - nb : P; end
            end
          end
        end
      end
      S_MVRD: st <= S_MVWR;
      S_MVWR: begin
        st <= S_MVRD; dcnt <= dcnt + 1;
        if (x + 1 < ir[F_WO]) begin x <= x + 1; xo <= ((x + 1) & rmask) == 0 ? 0 : xo + ir[F_HW]; end
        else begin
          x <= 0; xo <= 0;
          if (y + 1 < ir[F_HO]) begin
            y <= y + 1;
            if (((y + 1) & rmask) == 0) begin yo <= 0; srow <= srow + W; end else yo <= yo + ir[F_RHW];
          end
          else begin
            y <= 0; yo <= 0; srow <= 0; mvb <= mvb + ir[F_RRHW];
            if (mc + 1 < ir[F_O]) mc <= mc + 1; else begin ibase <= ibase + IWORDS; st <= S_FETCH; end
          end
        end
      end
      default: done <= 1;
    endcase
  end
endmodule
"""

def eu_verilog(p: int = 4, dw: int = 32, ww: int = 32, accw: int = 48, rw: int = 64, mw: int = 64,
               **widths: int) -> str:
    """The EU's Verilog with its parameters set: ``p`` rows, data / weight / accumulator widths, the output
    pipeline's value width ``rw`` (every stage) and requant multiplier width ``mw`` (both), and any of
    :data:`PARAMS` by name (e.g. ``eu_verilog(**image.widths)``: every width sized to a program)."""
    par = {"P": p, "DW": dw, "WW": ww, "ACCW": accw, "VW": rw, "M1W": mw, "QW": rw, "M2W": mw, "EW": rw,
           "P1W": rw + mw, "P2W": rw + mw, "NW": 6, "ASW": 5, "AW": 20, "IAW": 12, "WAW": 16, "PAW": 16, "CW": 16}
    par.update({k.upper(): int(v) for k, v in widths.items()})
    unknown = set(par) - set(PARAMS)
    if unknown:
        raise HardwareError(f"mnisc rtl: unknown EU parameters {sorted(unknown)}")
    par.setdefault("IW", max(par["AW"], par["WAW"], par["PAW"], par["CW"]))
    head = EU_VERILOG[:EU_VERILOG.index(") (")]
    text = ", ".join(f"{k} = {par[k]}" for k in PARAMS)
    return EU_VERILOG.replace(head, f"module mnisc_core #(parameter {text}", 1)


TESTBENCH = """module tb;
  reg clk = 0, rst = 1;
  always #5 clk = ~clk;
  wire done, d_we;
  wire [{IAW}-1:0] i_addr; wire [{WAW}-1:0] w_addr; wire [{PAW}-1:0] p_addr; wire [{AW}-1:0] d_raddr, d_waddr;
  wire signed [{DW}-1:0] d_wdata;
  reg [31:0] imem [0:{NI}]; reg [{P}*{WW}-1:0] wmem [0:{NWORDS}];
  reg [63:0] pmem [0:{NP}]; reg [{DW}-1:0] dmem [0:{ND}];
  reg [31:0] i_q; reg [{P}*{WW}-1:0] w_q; reg [63:0] p_q; reg [{DW}-1:0] d_q;
  always @(posedge clk) begin
    i_q <= imem[i_addr]; w_q <= wmem[w_addr]; p_q <= pmem[p_addr]; d_q <= dmem[d_raddr];
    if (d_we) dmem[d_waddr] <= d_wdata;
  end
  mnisc_core eu(.clk(clk), .rst(rst), .done(done), .i_addr(i_addr), .i_q(i_q),
    .w_addr(w_addr), .w_q(w_q), .p_addr(p_addr), .p_q($signed(p_q)), .d_raddr(d_raddr), .d_q($signed(d_q)),
    .d_we(d_we), .d_waddr(d_waddr), .d_wdata(d_wdata));
  integer cycles = 0;
  initial begin
    $readmemh("imem.hex", imem); $readmemh("wmem.hex", wmem); $readmemh("pmem.hex", pmem);
    $readmemh("dmem.hex", dmem);
    #21 rst = 0;
    while (!done && cycles < {LIMIT}) begin @(posedge clk); cycles = cycles + 1; end
    $writememh("dmem_out.hex", dmem);
    $display("CYCLES %0d DONE %0d", cycles, done);
    $finish;
  end
endmodule
"""


@dataclass(frozen=True)
class EuCosim:
    """A co-simulation of the whole program on the RTL EU (:func:`cosimulate_eu`): the cycles it ran, whether
    the program finished (``done``), the elements compared and the mismatching ones per stored tensor."""

    cycles: int
    done: bool
    elements: int
    mismatches: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.done and self.elements > 0 and not any(self.mismatches.values())


def cosimulate_eu(prog: Program, codes: np.ndarray, work_dir: Path, p: int = 4, dw: int = 40,
                  limit: int = 50_000_000, timeout_s: float = 600.0) -> EuCosim:
    """Run ``prog`` on the RTL EU in Icarus Verilog from the input ``codes`` (one image, int64) and compare
    every tensor it writes with the integer program's (:func:`mixq.engine.program.run_program`)."""
    import torch

    from mixq.engine.program import run_program

    img = eu_image(prog, p, dw=dw)
    work_dir.mkdir(parents=True, exist_ok=True)
    data = [0] * img.data_words
    base, shape = img.tensors[prog.input.tensor]
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    data[base:base + flat.size] = [_twos(int(v), img.dw) for v in flat]
    for name, (image, width) in {"imem.hex": (img.instr, 32), "wmem.hex": (img.weights, p * img.ww),
                                 "pmem.hex": (img.params, 64), "dmem.hex": (data, img.dw)}.items():
        write_mem(work_dir / name, image or [0], width)
    sizes = {"NI": len(img.instr), "NWORDS": max(len(img.weights), 1), "NP": max(len(img.params), 1),
             "ND": img.data_words, "LIMIT": limit, **img.widths}
    tb = TESTBENCH
    for k, v in sizes.items():
        tb = tb.replace("{" + k + "}", str(v))
    atomic_write_text(work_dir / "mnisc_eu.v", eu_verilog(**img.widths))
    atomic_write_text(work_dir / "tb.v", tb)
    _run(["iverilog", "-g2012", "-o", "sim", "mnisc_eu.v", "tb.v"], work_dir, timeout_s)
    line = [ln for ln in _run(["vvp", "-n", "sim"], work_dir, timeout_s).splitlines() if ln.startswith("CYCLES")][-1]
    words = [ln.strip() for ln in (work_dir / "dmem_out.hex").read_text().splitlines()
             if ln.strip() and not ln.startswith("//")]
    got = np.array([int(w, 16) if "x" not in w.lower() else 1 << 62 for w in words], dtype=object)
    got = np.where(got >= 1 << (img.dw - 1), got - (1 << img.dw), got)
    ref = run_program(prog, torch.from_numpy(flat.reshape(1, *shape)), keep=True)
    assert isinstance(ref, dict)
    bad, n = {}, 0
    for name, (b, _) in img.tensors.items():
        want = ref[name].reshape(-1).numpy().astype(object)
        bad[name] = int((got[b:b + want.size] != want).sum())
        n += want.size
    _, cyc, _, done = line.split()
    return EuCosim(int(cyc), done == "1", n, bad)
