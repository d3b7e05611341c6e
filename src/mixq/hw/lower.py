"""Lower a captured model and its plan to hardware layers: which PE kind computes which rows.

Rules (one place, so every template agrees):

* fixed point runs on DSPs (``mapping.core`` ``auto`` or ``dsp``) — two rows per DSP
  when packing is legal (:func:`mixq.hw.pe.dsp_packing`; never for depthwise layers,
  whose rows do not share an activation) — or on LUTs (``core = "lut"``);
* SP2 → ``sp2`` shift-add lanes; power of two and focused (shift) → ``pot``;
  ternary → ``ternary``; binary weights with binary activations → ``xnor``, with wider
  activations → ``ternary`` (a select);
* formats without a shift-add datapath (minifloat, posit, k-term SP with k != 2) are
  modelled as a fixed-point multiply of their storage width, with a note;
* **a layer absent from the plan (or with float weights) is modelled as W8A8
  fixed point on DSPs** and listed in the estimate's notes — an FPGA engine has no
  float datapath, and 8-bit is what such a layer would be deployed at.

Activations are unsigned unless the activation format says ``signed`` (a float
input is taken as signed 8-bit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mixq.graph.spec import LayerSpec
from mixq.hw.bits import exact_operand_bits, exact_sum_bits
from mixq.hw.kinds import MULTIPLY_KINDS, PE_KINDS, STREAM_OPS, WEIGHT_KINDS, shares_act
from mixq.hw.parts import Part
from mixq.hw.pe import dsp_packing
from mixq.hw.window import line_pixels
from mixq.plan.plan import HwMapping, LayerPlan, QuantPlan

ASSUMED_BITS = 8
# A residual stream the plan leaves exact (``residual_bits`` unset) is an integer on its accumulator grid, and the
# add and its skip FIFO are priced at the width the integer engine gives it (`mixq.hw.bits.exact_sum_bits`: up to
# 40 bits; the RTL builds that width), with a note naming the remedy: `residual_bits` (`mixq quantize
# --residual-bits`), which `mixq search` also tries. Until session 22 they were priced at the activation width.
EXACT_STREAM_NOTE = ("exact residual stream (plan residual_bits unset): priced at the integer engine's width of "
                     "its sum")
# Spec kinds an exact stream passes through unchanged on its way to an add (a folded BatchNorm, a ReLU on the sum)
_STREAM_PASS = ("bn", "relu", "relu6")
# Stream operators between compute layers, each priced by `mixq.hw.streamops.stream_engine` (the table:
# `mixq.hw.kinds.STREAM_OPS`)
STREAM_KINDS: tuple[str, ...] = tuple(STREAM_OPS)


@dataclass(frozen=True)
class RowGroup:
    """Rows of one layer that share a weight format and hence a PE kind."""

    kind: str
    wbits: int
    abits: int
    signed_act: bool
    fraction: float
    fmt: str

    @property
    def core(self) -> str:
        """``dsp`` or ``lut``: which resource the group's products use."""
        return PE_KINDS[self.kind].core


@dataclass(frozen=True)
class HwLayer:
    """One layer as the hardware sees it (compute layers carry ``groups``)."""

    spec: LayerSpec
    groups: tuple[RowGroup, ...] = ()
    abits: int = ASSUMED_BITS
    out_bits: int = ASSUMED_BITS
    mapping: HwMapping = field(default_factory=HwMapping)
    note: str = ""
    fifo_bits: int = 0  # residual adds: bits the skip path must buffer

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_compute(self) -> bool:
        return bool(self.groups)


def _fmt_name(fmt: object) -> str:
    return str(fmt) if fmt is not None else "float"


def _act(lp: LayerPlan | None) -> tuple[int, bool]:
    if lp is None or lp.act is None:
        return ASSUMED_BITS, True
    return int(lp.act.storage_bits), bool(getattr(lp.act, "signed", False))


def pe_kind(fmt: object, core: str, act_fmt: object, spec: LayerSpec, part: Part,
            wbits: int, abits: int, signed_act: bool) -> tuple[str, int, str]:
    """(PE kind, weight bits, note) for rows in format ``fmt`` (``None`` = float)."""
    kind = getattr(fmt, "kind", None)
    wk = WEIGHT_KINDS.get(kind) if isinstance(kind, str) else None
    if wk is not None and wk.lane is not None and wk.fits_lane(fmt):
        pk = PE_KINDS[wk.lane]
        note = ""
        # the lane's activation width, or activations of the weights' own format (binary x binary)
        narrow_act = pk.act_bits in (None, abits) or getattr(act_fmt, "kind", None) == wk.name
        if not narrow_act and wk.wide_act:  # e.g. binary weights with multi-bit activations: ternary selects
            pk, note = PE_KINDS[wk.wide_act], wk.wide_act_note
        if wbits < pk.min_wbits and pk.fallback:
            pk = PE_KINDS[pk.fallback]
        return pk.name, pk.weight_bits or max(wbits, pk.min_wbits), note
    native = kind is None or (wk is not None and wk.native)
    note = "" if native else f"{kind} weights modelled as a {wbits}-bit fixed-point multiply"
    k = MULTIPLY_KINDS[core] if core in MULTIPLY_KINDS else MULTIPLY_KINDS["dsp"]
    packed = PE_KINDS[k].packed
    if packed and shares_act(spec.kind) and part.dsp_type != "S10-VPDSP" and dsp_packing(
            part.dsp_type, wbits, abits, max(spec.row_length, 1), signed_act,
            narrow=bool(getattr(fmt, "narrow", False))) == 2:
        return packed, wbits, note
    return k, wbits, note


def _groups(spec: LayerSpec, lp: LayerPlan | None, part: Part, abits: int, signed: bool) -> tuple[
        tuple[RowGroup, ...], str]:
    notes = []
    if lp is None or lp.weight is None:
        k, w, _ = pe_kind(None, "dsp", None, spec, part, ASSUMED_BITS, abits, signed)
        return (RowGroup(k, w, abits, signed, 1.0, "float->fixed8"),), "float layer modelled as W8A8"
    rho = lp.alt_fraction(spec.weight_rows)
    out = []
    for fmt, frac in ((lp.weight, 1.0 - rho), (lp.weight_alt, rho)):
        if fmt is None or frac <= 0:
            continue
        k, w, note = pe_kind(fmt, lp.mapping.core, lp.act, spec, part, int(fmt.storage_bits), abits, signed)
        if note:
            notes.append(note)
        out.append(RowGroup(k, w, abits, signed, frac, _fmt_name(fmt)))
    return tuple(out), "; ".join(notes)


def _ancestors(by_name: dict[str, LayerSpec], name: str) -> set[str]:
    """``name`` and every spec it reads, directly or through others."""
    out: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in out or n not in by_name:
            continue
        out.add(n)
        stack.extend(by_name[n].inputs)
    return out


def _lag_pixels(s: LayerSpec, hw: tuple[int, int]) -> float:
    """Pixels of an ``hw`` map a k x k layer's window keeps its output behind its input: its line buffer
    (:func:`mixq.hw.window.line_pixels`) on its input map, in pixels of the ``hw`` map."""
    if len(s.in_shape) != 3:
        return 0.0
    _, h, w = s.in_shape
    return line_pixels(s.kernel, w) * hw[0] * hw[1] / max(h * w, 1)


def _skip_fifo(s: LayerSpec, by_name: dict[str, LayerSpec], abits: int) -> int:
    """Bits a join's skip input waits in (a residual add's, a concat's): from the fork where its operands part
    (their latest common ancestor), the operand behind the fewer line buffers (the skip: the fork itself, or a
    1 x 1 projection) waits for the other (the branch) — the branch's line buffers minus the skip's, in pixels of
    the join's map, and one row of it — at ``abits`` a code of each of the skip's channels."""
    ins = [n for n in s.inputs if n in by_name]
    if len(ins) < 2 or len(s.out_shape) != 3:
        return 0
    _, h, w = s.out_shape
    anc = [_ancestors(by_name, n) for n in ins]
    common = set.intersection(*anc)
    delays = [sum(_lag_pixels(by_name[n], (h, w)) for n in a - common if by_name[n].is_compute) for a in anc]
    skip = by_name[ins[delays.index(min(delays))]].out_shape
    c = skip[0] if len(skip) == 3 else s.out_shape[0]
    return int(math.ceil(max(delays) - min(delays)) + w) * c * abits


def _folded(bn: LayerSpec, by_name: dict[str, LayerSpec]) -> bool:
    """A BatchNorm that `mixq.graph.fold_bn` folds: the only consumer of the compute layer feeding it."""
    prev = by_name.get(bn.inputs[0]) if len(bn.inputs) == 1 else None
    return prev is not None and prev.is_compute and prev.outputs == (bn.name,)


def lower(specs: list[LayerSpec], plan: QuantPlan, part: Part) -> list[HwLayer]:
    """Hardware layers in graph order (compute layers and the stream operators between them)."""
    compute = [s for s in specs if s.is_compute]
    act = {s.name: _act(plan.get(s.name)) for s in compute}
    out: list[HwLayer] = []
    by_name: dict[str, LayerSpec] = {}
    for s in specs:  # the first spec of each name, as a scan from the start finds it
        by_name.setdefault(s.name, s)
    exact: dict[str, tuple[bool, int]] = {}  # value -> (a residual sum?, bits) where an add would read it exact
    ci = 0
    for s in specs:
        if s.is_compute:
            lp = plan.get(s.name)
            abits, signed = act[s.name]
            nxt = compute[ci + 1].name if ci + 1 < len(compute) else None
            out_bits = act[nxt][0] if nxt else ASSUMED_BITS
            groups, note = _groups(s, lp, part, abits, signed)
            out.append(HwLayer(s, groups, abits, out_bits, lp.mapping if lp else HwMapping(), note))
            exact[s.name] = (False, exact_operand_bits(max(g.wbits for g in groups) + abits, max(s.row_length, 1)))
            ci += 1
            continue
        if s.kind in _STREAM_PASS and len(s.inputs) == 1 and s.inputs[0] in exact:
            exact[s.name] = exact[s.inputs[0]]
        op = STREAM_OPS.get(s.kind)
        if op is None or (op.folds and _folded(s, by_name)):
            continue  # not priced, or a BN folded into the conv / linear before it (graph.fold_bn)
        nxt = compute[ci].name if ci < len(compute) else None
        abits, note = (act[nxt][0] if nxt else ASSUMED_BITS), ""
        if s.kind == "add":  # a residual stream: the plan's residual_bits, or exact (EXACT_STREAM_NOTE)
            if plan.residual_bits:
                abits = plan.residual_bits
            else:
                ins = [exact.get(n, (False, abits)) for n in s.inputs]  # else a code: abits wide
                abits = exact_sum_bits([b for sum_, b in ins if not sum_], [b for sum_, b in ins if sum_])
                exact[s.name], note = (True, abits), EXACT_STREAM_NOTE
        fifo = _skip_fifo(s, by_name, abits) if op.skip_fifo else 0
        out.append(HwLayer(s, (), abits, abits, HwMapping(), note, fifo))
    return out
