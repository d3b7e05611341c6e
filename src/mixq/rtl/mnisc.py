"""The single-engine ("mnisc") accelerator: the program as the template sees it, and the EU in Verilog.

:func:`eu_steps` turns a lowered :class:`mixq.engine.program.Program` into the plain-data steps
(:class:`mixq.hw.mnisc.EuStep`) the template prices: ``mixq.engine`` may not import ``mixq.hw`` (nor the
other way round), so the conversion lives here, in the layer above both. Widths come from every tensor's
proven range (:func:`tensor_ranges`: the input format's levels through the weights and the post-ops),
never from data.

    prog = lower(to_integer(qmodel, (3, 1080, 1920)))      # shapes only: any resolution
    est = estimate_mnisc(eu_steps(prog), EuConfig(p=16, s=16, wbits=4, abits=4))

:data:`EU_VERILOG` is the EU with its sequencer: ``P`` MAC rows that share one activation per cycle (s = 1),
an instruction list of 32 words per step (:data:`FIELDS`: shapes, stride, zero insertion as a power of two,
padding, groups, two concatenated inputs, up to two outputs each with a clamp / requant / clamp / requant /
clamp pipeline per row and a 2**k max-pool by read-modify-write, a pixel-shuffle move), memories outside it
(synchronous read). :func:`eu_image` compiles a program into the memory images (data memory map, instructions,
weights block by block, per-row parameters) and refuses by name what the RTL does not build (concat moves,
dilation, saturating accumulators, padded or odd pools, more than two inputs / outputs / requantizations).
:func:`cosimulate_eu` runs the whole program in Icarus and compares every tensor the EU writes with the
integer program's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixq.engine.program import ConvStep, MoveStep, PostOp, Program, Read, StepOutput
from mixq.errors import HardwareError
from mixq.formats import format_from_dict
from mixq.hw.mnisc import CONST_BITS_PER_ROW, EuStep
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


def tensor_ranges(prog: Program) -> dict[str, tuple[int, int]]:
    """Every stored tensor's proven ``(least, greatest)`` value, from the input format's range and the
    weights (never from data); per-channel limits are taken per channel and then over the tensor."""
    levels = format_from_dict(prog.input_quantizer["fmt"]).int_levels()
    c_in = prog.input.shape[0]
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {
        prog.input.tensor: (np.full(c_in, int(min(levels)), dtype=object),
                            np.full(c_in, int(max(levels)), dtype=object))}

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
        a_lo, a_hi = _conv_range(step, lo, hi)
        for out in step.outputs:
            o_lo, o_hi = a_lo, a_hi
            for op in out.ops:
                o_lo, o_hi = _op_range(op, o_lo, o_hi)
            per[out.name] = (o_lo, o_hi)
    return {k: (int(min(v[0])), int(max(v[1]))) for k, v in per.items()}


def range_bits(lo: int, hi: int) -> int:
    """Bits of a register holding ``[lo, hi]``: unsigned when ``lo >= 0``, else two's complement."""
    if lo >= 0:
        return max(int(hi).bit_length(), 1)
    return max(int(-lo - 1).bit_length(), int(hi).bit_length()) + 1


def _bits(rng: dict[str, tuple[int, int]], name: str) -> int:
    return range_bits(*rng[name])


def _signed_bits(a: np.ndarray) -> int:
    return range_bits(int(a.min(initial=0)), int(a.max(initial=0)))


def _eu_step(step: ConvStep | MoveStep, rng: dict[str, tuple[int, int]]) -> EuStep:
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
    return EuStep(
        step.name, step.kind, (c, h, w), tuple(int(d) for d in step.acc_shape),  # type: ignore[arg-type]
        kernel=(int(step.weight.shape[2]), int(step.weight.shape[3])), groups=step.groups, zero_insert=step.zero_insert,
        padded_width=(w - 1) * zw + 1 + ew + le + r, in_bits=in_bits, wbits=wbits, read_bits=read,
        write_bits=sum(math.prod(out.shape) * _bits(rng, out.name) for out in step.outputs),
        weight_bits=int(step.weight.size) * wbits + o * CONST_BITS_PER_ROW * len(step.outputs),
        outputs=len(step.outputs), pooled=any(op.kind == "maxpool" for out in step.outputs for op in out.ops))


def eu_steps(prog: Program) -> tuple[EuStep, ...]:
    """The program's steps as the template sees them: shapes, code widths, bits read and written."""
    rng = tensor_ranges(prog)
    return tuple(_eu_step(s, rng) for s in prog.steps)


# ----------------------------------------------------------------------------- the EU in Verilog

NPRM = 21  # words per output row: bias, then per output chain lo_a, hi_a, M1, n1, lo_b, hi_b, M2, n2, lo_c, hi_c
INSTR_WORDS = 32
FIELDS = ("kind", "c", "h", "w", "o", "ho", "wo", "kh", "kw", "sh", "sw", "zsh", "zsw", "pt", "pl", "cg", "rpg",
          "in0", "c0", "in1", "wb", "pb", "nout", "ob0", "ob1", "ps0", "ps1", "hp", "wp", "ash", "hw", "howo")
KINDS = {"conv": 0, "pixel_shuffle": 1, "end": 15}
UNBOUNDED = 1 << 62


@dataclass(frozen=True)
class EuImage:
    """The memory images of one program on the RTL EU: instructions (32 x 32-bit words per step),
    weights (``p`` lanes per word), per-row parameters (64-bit), and the data memory map."""

    p: int
    ww: int
    dw: int
    instr: list[int]
    weights: list[int]
    params: list[int]
    tensors: dict[str, tuple[int, tuple[int, ...]]]  # name -> (base address, shape)
    data_words: int


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


def eu_image(prog: Program, p: int = 4, ww: int = 32, dw: int = 32) -> EuImage:
    """Compile a program for the RTL EU (:data:`EU_VERILOG`): data memory map, instruction list, weights
    laid out block by block (``p`` rows of one group share the activation), per-row parameters."""
    rng = tensor_ranges(prog)
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
    instr: list[int] = []
    weights: list[int] = []
    params: list[int] = []
    for step in prog.steps:
        f = dict.fromkeys(FIELDS, 0)
        if isinstance(step, MoveStep):
            if step.kind != "pixel_shuffle":
                raise HardwareError(f"mnisc rtl: step {step.name!r}: a {step.kind} move is not in the RTL")
            (read,) = step.inputs
            c, h, w = read.shape
            o, ho, wo = step.shape
            f.update(kind=KINDS["pixel_shuffle"], c=c, h=h, w=w, o=o, ho=ho, wo=wo, hw=h * w, howo=ho * wo,
                     zsh=_log2(int(step.attrs["factor"]), f"step {step.name!r} factor"),
                     in0=tensors[read.tensor][0], ob0=alloc(step.name, step.shape))
            instr += [f[k] for k in FIELDS]
            continue
        if step.dilation != (1, 1) or step.acc_bits is not None or len(step.inputs) > 2 or len(step.outputs) > 2:
            raise HardwareError(f"mnisc rtl: step {step.name!r}: dilation, saturation, more than two inputs or "
                                "outputs are not in the RTL")
        c, h, w = step.in_shape
        o, ho, wo = step.acc_shape
        t, _, le, _ = step.padding
        reads = [tensors[r.tensor][0] for r in step.inputs]
        chains = [_chain(out, o, step.name) for out in step.outputs]
        pooled = [ps for _, ps in chains if ps]
        hp = wp = 0
        if pooled:
            hp, wp = ho >> pooled[0], wo >> pooled[0]
        zh, zw = step.zero_insert
        f.update(kind=KINDS["conv"], c=c, h=h, w=w, o=o, ho=ho, wo=wo, kh=step.weight.shape[2], kw=step.weight.shape[3],
                 sh=step.stride[0], sw=step.stride[1], zsh=_log2(zh, "zero insertion"), zsw=_log2(zw, "zero insertion"),
                 pt=t, pl=le, cg=c // step.groups, rpg=o // step.groups, in0=reads[0],
                 c0=step.inputs[0].shape[0] if len(reads) > 1 else c, in1=reads[-1], wb=len(weights), pb=len(params),
                 nout=len(step.outputs), ps0=chains[0][1], ps1=chains[-1][1], hp=hp, wp=wp, ash=step.acc_shift,
                 hw=h * w, howo=ho * wo)
        for j, out in enumerate(step.outputs):
            f[f"ob{j}"] = alloc(out.name, out.shape)
        if len(step.outputs) == 1:
            f["ob1"] = f["ob0"]
        instr += [f[k] for k in FIELDS]
        rpg, wflat = o // step.groups, step.weight.reshape(o, -1)
        for g in range(step.groups):
            for o0 in range(0, rpg, p):
                rows = range(g * rpg + o0, g * rpg + min(o0 + p, rpg))
                for tap in range(wflat.shape[1]):
                    weights.append(sum(_twos(int(wflat[r, tap]), ww) << (ww * i) for i, r in enumerate(rows)))
        for r in range(o):
            row = [int(step.bias[r])]
            for j in range(2):
                arrays, _ = chains[min(j, len(chains) - 1)]  # 10 words per chain
                row += [int(a[r]) for a in arrays]
            params += [_twos(v, 64) for v in row]
    instr += [KINDS["end"]] + [0] * (INSTR_WORDS - 1)
    return EuImage(p, ww, dw, instr, weights, params, tensors, top)


#: The EU: ``P`` MAC rows sharing one activation per cycle (``s = 1``), a sequencer running the instruction
#: list (32 words per step; fields :data:`FIELDS`), memories outside (synchronous read, one cycle).
EU_VERILOG = """module mnisc_core #(parameter P = 4, DW = 32, WW = 32, ACCW = 48, RW = 64, MW = 64,
                    AW = 20, IAW = 12, WAW = 16, PAW = 16) (
  input clk, input rst, output reg done,
  output reg [IAW-1:0] i_addr, input [31:0] i_q,
  output reg [WAW-1:0] w_addr, input [P*WW-1:0] w_q,
  output reg [PAW-1:0] p_addr, input signed [63:0] p_q,
  output reg [AW-1:0] d_raddr, input signed [DW-1:0] d_q,
  output reg d_we, output reg [AW-1:0] d_waddr, output reg signed [DW-1:0] d_wdata
);
  localparam F_KIND=0, F_C=1, F_H=2, F_W=3, F_O=4, F_HO=5, F_WO=6, F_KH=7, F_KW=8, F_SH=9, F_SW=10, F_ZSH=11,
             F_ZSW=12, F_PT=13, F_PL=14, F_CG=15, F_RPG=16, F_IN0=17, F_C0=18, F_IN1=19, F_WB=20, F_PB=21,
             F_NOUT=22, F_OB0=23, F_OB1=24, F_PS0=25, F_PS1=26, F_HP=27, F_WP=28, F_ASH=29, F_HW=30, F_HOWO=31;
  localparam S_FETCH=0, S_DEC=1, S_MAC=2, S_DRAIN=3, S_PREAD=4, S_CHAIN=5, S_RMW=6, S_NEXT=7, S_MVRD=8,
             S_MVWR=9, S_DONE=10;
  localparam NPRM = 21;
  reg [3:0] st;
  reg [31:0] ir [0:31];
  reg [IAW-1:0] pc;
  reg [5:0] fk;
  reg [5:0] pk;
  reg [31:0] o0, og, cbase, nb, y, x, c, ky, kx, t, wrow, pidx, mc;
  reg ch, v1, a1;
  reg signed [ACCW-1:0] acc [0:P-1];
  reg signed [63:0] prm [0:NPRM-1];
  integer p;

  // ---- tap address (zero insertion, padding, concat of two inputs)
  wire [31:0] lg = ir[F_CG] * ir[F_KH] * ir[F_KW];
  wire signed [31:0] iy = $signed(y * ir[F_SH] + ky) - $signed(ir[F_PT]);
  wire signed [31:0] ix = $signed(x * ir[F_SW] + kx) - $signed(ir[F_PL]);
  wire [31:0] zmh = (32'd1 << ir[F_ZSH]) - 1, zmw = (32'd1 << ir[F_ZSW]) - 1;
  wire [31:0] ry = iy >>> ir[F_ZSH], rx = ix >>> ir[F_ZSW];
  wire tap_ok = !iy[31] && !ix[31] && (iy & zmh) == 0 && (ix & zmw) == 0 && ry < ir[F_H] && rx < ir[F_W];
  wire [31:0] chn = cbase + c;
  wire in1 = chn >= ir[F_C0];
  wire [31:0] chl = in1 ? chn - ir[F_C0] : chn;
  wire [31:0] tap_addr = (in1 ? ir[F_IN1] : ir[F_IN0]) + chl * ir[F_HW] + ry * ir[F_W] + rx;
  wire last_tap = t == lg - 1;

  // ---- output pipeline of row pidx, chain ch: clamp, requant (round half up), clamp; max-pool by read-modify-write
  wire [31:0] orow = o0 + pidx;
  wire [5:0] kb = 1 + 10 * ch;
  wire signed [RW-1:0] lo_a = prm[kb][RW-1:0], hi_a = prm[kb + 1][RW-1:0], lo_b = prm[kb + 4][RW-1:0];
  wire signed [RW-1:0] hi_b = prm[kb + 5][RW-1:0], lo_c = prm[kb + 8][RW-1:0], hi_c = prm[kb + 9][RW-1:0];
  wire signed [MW-1:0] m1 = prm[kb + 2][MW-1:0], m2 = prm[kb + 6][MW-1:0];
  wire [5:0] n1 = prm[kb + 3][5:0], n2 = prm[kb + 7][5:0];
  wire signed [RW+MW-1:0] half1 = n1 == 0 ? 0 : $signed({{(RW+MW-1){1'b0}}, 1'b1} << (n1 - 1));
  wire signed [RW+MW-1:0] half2 = n2 == 0 ? 0 : $signed({{(RW+MW-1){1'b0}}, 1'b1} << (n2 - 1));
  wire signed [RW-1:0] v = ($signed({{(RW-ACCW){acc[pidx][ACCW-1]}}, acc[pidx]}) <<< ir[F_ASH]) + prm[0][RW-1:0];
  wire signed [RW-1:0] ca = v < lo_a ? lo_a : (v > hi_a ? hi_a : v);
  wire signed [RW+MW-1:0] prod1 = ca * m1 + half1;
  wire signed [RW-1:0] rq1 = prod1 >>> n1;
  wire signed [RW-1:0] cb = rq1 < lo_b ? lo_b : (rq1 > hi_b ? hi_b : rq1);
  wire signed [RW+MW-1:0] prod2 = cb * m2 + half2;
  wire signed [RW-1:0] rq2 = prod2 >>> n2;
  wire signed [RW-1:0] e = rq2 < lo_c ? lo_c : (rq2 > hi_c ? hi_c : rq2);
  wire [31:0] ps = ch ? ir[F_PS1] : ir[F_PS0];
  wire [31:0] ob = ch ? ir[F_OB1] : ir[F_OB0];
  wire [31:0] pmask = (32'd1 << ps) - 1;
  wire [31:0] py = y >> ps, px = x >> ps;
  wire pvalid = py < ir[F_HP] && px < ir[F_WP];
  wire first = (y & pmask) == 0 && (x & pmask) == 0;
  wire [31:0] out_addr = ps == 0 ? ob + orow * ir[F_HOWO] + y * ir[F_WO] + x
                                 : ob + orow * (ir[F_HP] * ir[F_WP]) + py * ir[F_WP] + px;
  wire signed [DW-1:0] old = d_q;
  wire signed [RW-1:0] old64 = old;
  wire signed [RW-1:0] pooled = first ? e : (e > old64 ? e : old64);

  // ---- pixel shuffle move: output (mc, y, x) <- input (mc*r*r + (y%r)*r + x%r, y/r, x/r), r = 2**ZSH
  wire [31:0] rmask = (32'd1 << ir[F_ZSH]) - 1;
  wire [31:0] mv_src = ir[F_IN0] + (((mc << ir[F_ZSH]) + (y & rmask)) << ir[F_ZSH] | (x & rmask)) * ir[F_HW]
                       + (y >> ir[F_ZSH]) * ir[F_W] + (x >> ir[F_ZSH]);
  wire [31:0] mv_dst = ir[F_OB0] + mc * ir[F_HOWO] + y * ir[F_WO] + x;

  always @* begin
    i_addr = pc * 32 + fk;
    w_addr = ir[F_WB] + wrow + t;
    p_addr = ir[F_PB] + orow * NPRM + pk;
    d_raddr = st == S_MAC ? tap_addr : (st == S_MVRD ? mv_src : out_addr);
    d_we = 0; d_waddr = out_addr; d_wdata = e[DW-1:0];
    if (st == S_CHAIN && ps == 0) d_we = 1;
    if (st == S_RMW && pvalid) begin d_we = 1; d_wdata = pooled[DW-1:0]; end
    if (st == S_MVWR) begin d_we = 1; d_waddr = mv_dst; d_wdata = d_q; end
  end

  always @(posedge clk) begin
    if (rst) begin
      st <= S_FETCH; pc <= 0; fk <= 0; done <= 0; a1 <= 0;
    end else case (st)
      S_FETCH: begin
        if (fk != 0) ir[fk - 1] <= i_q;
        fk <= fk + 1;
        if (fk == 32) begin fk <= 0; st <= S_DEC; end
      end
      S_DEC: begin
        o0 <= 0; og <= 0; cbase <= 0; y <= 0; x <= 0; c <= 0; ky <= 0; kx <= 0; t <= 0; wrow <= 0; mc <= 0;
        a1 <= 0; nb <= ir[F_RPG] < P ? ir[F_RPG] : P;
        for (p = 0; p < P; p = p + 1) acc[p] <= 0;
        st <= ir[F_KIND] == 0 ? S_MAC : (ir[F_KIND] == 1 ? S_MVRD : S_DONE);
      end
      S_MAC, S_DRAIN: begin
        if (a1 && v1)
          for (p = 0; p < P; p = p + 1) acc[p] <= acc[p] + $signed(w_q[p*WW +: WW]) * d_q;
        v1 <= tap_ok; a1 <= st == S_MAC;
        if (st == S_DRAIN) begin st <= S_PREAD; pidx <= 0; pk <= 0; ch <= 0; end
        else begin
          t <= t + 1;
          if (kx + 1 < ir[F_KW]) kx <= kx + 1;
          else begin
            kx <= 0;
            if (ky + 1 < ir[F_KH]) ky <= ky + 1; else begin ky <= 0; c <= c + 1; end
          end
          if (last_tap) st <= S_DRAIN;
        end
      end
      S_PREAD: begin
        if (pk != 0) prm[pk - 1] <= p_q;
        pk <= pk + 1;
        if (pk == NPRM) begin pk <= 0; ch <= 0; st <= S_CHAIN; end
      end
      S_CHAIN, S_RMW: begin
        if (st == S_CHAIN && ps != 0) st <= S_RMW;
        else if (ch + 1 < ir[F_NOUT]) begin ch <= ch + 1; st <= S_CHAIN; end
        else if (pidx + 1 < nb) begin pidx <= pidx + 1; pk <= 0; st <= S_PREAD; end
        else st <= S_NEXT;
      end
      S_NEXT: begin
        for (p = 0; p < P; p = p + 1) acc[p] <= 0;
        c <= 0; ky <= 0; kx <= 0; t <= 0; a1 <= 0; st <= S_MAC;
        if (x + 1 < ir[F_WO]) x <= x + 1;
        else begin
          x <= 0;
          if (y + 1 < ir[F_HO]) y <= y + 1;
          else begin
            y <= 0; wrow <= wrow + lg;
            if (o0 + nb >= ir[F_O]) begin pc <= pc + 1; st <= S_FETCH; end
            else begin
              o0 <= o0 + nb;
              if (og + nb >= ir[F_RPG]) begin og <= 0; cbase <= cbase + ir[F_CG];
                                              nb <= ir[F_RPG] < P ? ir[F_RPG] : P; end
              else begin og <= og + nb; nb <= (ir[F_RPG] - og - nb) < P ? ir[F_RPG] - og - nb : P; end
            end
          end
        end
      end
      S_MVRD: st <= S_MVWR;
      S_MVWR: begin
        st <= S_MVRD;
        if (x + 1 < ir[F_WO]) x <= x + 1;
        else begin
          x <= 0;
          if (y + 1 < ir[F_HO]) y <= y + 1;
          else begin
            y <= 0;
            if (mc + 1 < ir[F_O]) mc <= mc + 1; else begin pc <= pc + 1; st <= S_FETCH; end
          end
        end
      end
      default: done <= 1;
    endcase
  end
endmodule
"""

def eu_verilog(p: int = 4, dw: int = 32, ww: int = 32, accw: int = 48, rw: int = 64, mw: int = 64) -> str:
    """The EU's Verilog with its parameters set: ``p`` rows, data / weight / accumulator widths, the output
    pipeline's value width ``rw`` and requant multiplier width ``mw`` (the co-simulation keeps 64: every
    limit and multiplier of the parameter memory as written)."""
    return EU_VERILOG.replace("parameter P = 4, DW = 32, WW = 32, ACCW = 48, RW = 64, MW = 64",
                              f"parameter P = {p}, DW = {dw}, WW = {ww}, ACCW = {accw}, RW = {rw}, MW = {mw}", 1)


TESTBENCH = """module tb;
  reg clk = 0, rst = 1;
  always #5 clk = ~clk;
  wire done, d_we;
  wire [11:0] i_addr; wire [15:0] w_addr, p_addr; wire [19:0] d_raddr, d_waddr;
  wire signed [{DW}-1:0] d_wdata;
  reg [31:0] imem [0:{NI}]; reg [{P}*{WW}-1:0] wmem [0:{NW}]; reg [63:0] pmem [0:{NP}]; reg [{DW}-1:0] dmem [0:{ND}];
  reg [31:0] i_q; reg [{P}*{WW}-1:0] w_q; reg [63:0] p_q; reg [{DW}-1:0] d_q;
  always @(posedge clk) begin
    i_q <= imem[i_addr]; w_q <= wmem[w_addr]; p_q <= pmem[p_addr]; d_q <= dmem[d_raddr];
    if (d_we) dmem[d_waddr] <= d_wdata;
  end
  mnisc_core #(.P({P}), .DW({DW}), .WW({WW})) eu(.clk(clk), .rst(rst), .done(done), .i_addr(i_addr), .i_q(i_q),
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
    """A co-simulation of the whole program on the RTL EU: mismatching elements per stored tensor."""

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
    sizes = {"NI": len(img.instr), "NW": max(len(img.weights), 1), "NP": max(len(img.params), 1),
             "ND": img.data_words, "P": p, "WW": img.ww, "DW": img.dw, "LIMIT": limit}
    tb = TESTBENCH
    for k, v in sizes.items():
        tb = tb.replace("{" + k + "}", str(v))
    atomic_write_text(work_dir / "mnisc_eu.v", EU_VERILOG)
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
