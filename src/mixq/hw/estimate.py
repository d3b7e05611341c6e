"""`estimate`: resources, FPS, latency and bottleneck of a planned model on a part and template.

>>> from mixq.graph.spec import LayerSpec
>>> from mixq.plan import QuantPlan, LayerPlan, HwMapping
>>> from mixq.formats import FixedPoint
>>> fc = LayerSpec("fc", "linear", (64,), (10,), 64, 10, macs=640)
>>> plan = QuantPlan("toy", {"fc": LayerPlan(FixedPoint(4), act=FixedPoint(4, signed=False),
...                                          mapping=HwMapping(pe=2, simd=8))})
>>> e = estimate([fc], plan, "xc7z020", fold="plan")
>>> e.layers[0].cycles  # ceil(10/2) * ceil(64/8) * 1 pixel
40
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mixq.errors import HardwareError
from mixq.graph.spec import LayerSpec
from mixq.hw import overlay as ov
from mixq.hw import streaming as st
from mixq.hw.cost import RESOURCE_NAMES, CostModel, Resources
from mixq.hw.kinds import PE_KINDS
from mixq.hw.lower import HwLayer, lower
from mixq.hw.parts import Part, get_part
from mixq.hw.pe import PeConfig, dsp_packing
from mixq.hw.units import ArchOptions, budget, shell
from mixq.plan.plan import HwMapping, QuantPlan, validate_plan

ARCHS = ("streaming", "overlay")
FOLDS = ("auto", "plan", "optimize")


@dataclass(frozen=True)
class LayerEstimate:
    """One layer of an estimate."""

    name: str
    kind: str
    macs: int
    cycles: int
    seconds: float
    pe: int
    simd: int
    resources: Resources
    formats: str
    bound: str = "compute"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "macs": self.macs, "cycles": self.cycles,
                "ms": round(self.seconds * 1e3, 4), "pe": self.pe, "simd": self.simd,
                "resources": self.resources.to_dict(), "formats": self.formats, "bound": self.bound,
                **({"note": self.note} if self.note else {})}


@dataclass(frozen=True)
class Overflow:
    """A resource the design needs more of than the part(s) offer."""

    resource: str
    used: float
    available: float
    largest_layer: str
    largest_use: float

    @property
    def excess(self) -> float:
        return self.used - self.available

    def message(self) -> str:
        return (f"{self.resource} {self.used:,.0f} > {self.available:,.0f} available "
                f"(+{self.excess:,.0f}, {100 * self.used / max(self.available, 1e-9):.0f}%); "
                f"largest user {self.largest_layer} ({self.largest_use:,.0f})")


@dataclass(frozen=True)
class Estimate:
    """Everything `estimate` computes; ``to_dict()`` is the JSON the CLI writes."""

    model: str
    part: str
    arch: str
    n_parts: int
    clock_mhz: float
    layers: tuple[LayerEstimate, ...]
    resources: Resources
    available: Resources
    fps: float
    latency_ms: float
    macs: int
    bottleneck: str
    peak_macs_per_s: float
    peak: dict[str, Any]
    fits: bool
    overflows: tuple[Overflow, ...] = ()
    partition: tuple[tuple[str, ...], ...] = ()
    link_bits: tuple[int, ...] = ()
    cores: tuple[dict[str, Any], ...] = ()
    ddr_weights: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def gops(self) -> float:
        """Giga-operations per second (2 ops per MAC)."""
        return 2 * self.macs * self.fps / 1e9

    @property
    def macs_per_s(self) -> float:
        return self.macs * self.fps

    @property
    def peak_fraction(self) -> float:
        return self.macs_per_s / self.peak_macs_per_s if self.peak_macs_per_s else 0.0

    @property
    def utilization(self) -> dict[str, float]:
        return {n: (getattr(self.resources, n) / getattr(self.available, n) if getattr(self.available, n) else 0.0)
                for n in RESOURCE_NAMES}

    def folding(self) -> dict[str, tuple[int, int]]:
        """``{layer: (pe, simd)}`` of the compute layers (streaming; empty for the overlay)."""
        return {ly.name: (ly.pe, ly.simd) for ly in self.layers if ly.macs > 0 and ly.pe > 0}

    def check(self) -> Estimate:
        """Raise `HardwareError` (by how much, which resource, which layer) unless the design fits."""
        if not self.fits:
            what = "; ".join(o.message() for o in self.overflows) or "no split fits the parts and links"
            raise HardwareError(f"design does not fit {self.n_parts} x {self.part} ({self.arch}): {what}")
        return self

    def summary(self) -> dict[str, Any]:
        """The headline figures (no per-layer table): what a run summary's ``hardware`` section holds."""
        d = self.to_dict()
        keep = ("part", "arch", "parts", "clock_mhz", "fits", "fps", "latency_ms", "gops", "bottleneck",
                "peak_macs_per_s", "peak_fraction", "resources", "utilization")
        return {k: d[k] for k in keep} | {"overflows": [o["message"] for o in d["overflows"]]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "part": self.part, "arch": self.arch, "parts": self.n_parts,
            "clock_mhz": self.clock_mhz, "fits": self.fits,
            "fps": round(self.fps, 3), "latency_ms": round(self.latency_ms, 4), "gops": round(self.gops, 3),
            "macs": self.macs, "bottleneck": self.bottleneck,
            "peak_macs_per_s": self.peak_macs_per_s, "peak": self.peak,
            "peak_fraction": round(self.peak_fraction, 4),
            "resources": self.resources.to_dict(), "available": self.available.to_dict(),
            "utilization": {k: round(v, 4) for k, v in self.utilization.items()},
            "overflows": [{"resource": o.resource, "used": round(o.used, 1), "available": round(o.available, 1),
                           "excess": round(o.excess, 1), "largest_layer": o.largest_layer,
                           "message": o.message()} for o in self.overflows],
            "partition": [list(p) for p in self.partition], "link_bits_per_frame": list(self.link_bits),
            "cores": list(self.cores), "ddr_weights": list(self.ddr_weights), "notes": list(self.notes),
            "options": self.options,
            "layers": [ly.to_dict() for ly in self.layers],
        }


def _design_bits(layers: list[HwLayer]) -> tuple[int, int]:
    """The design's narrowest weight and activation widths (where its MACs are cheapest)."""
    ws = [g.wbits for ly in layers for g in ly.groups]
    as_ = [g.abits for ly in layers for g in ly.groups]
    return (min(ws) if ws else 8), (min(as_) if as_ else 8)


#: unit widths the peak tries for each LUT lane kind (the cheapest LUT per lane wins)
PEAK_SIMDS = (1, 2, 4, 8, 16, 32, 64)


def _lut_per_mac(part: Part, wbits: int, abits: int, model: CostModel) -> tuple[float, str]:
    """The fewest LUTs one MAC/cycle costs at ``wbits`` x ``abits`` on any LUT lane kind that takes those
    widths (fixed point, SP2, PoT, XNOR, ternary, ...), at any unit width, with the shortest accumulator."""
    best: tuple[float, str] = (math.inf, "")
    for k, v in PE_KINDS.items():
        if not v.is_dot or v.core != "lut":
            continue
        if (v.weight_bits is not None and v.weight_bits != wbits) or (v.act_bits is not None and v.act_bits != abits):
            continue
        for simd in PEAK_SIMDS:
            try:
                lut = model.pe(PeConfig(k, wbits, abits, simd, acc_len=simd), part.dsp_type).lut
            except HardwareError:  # widths this kind does not take
                break
            best = min(best, (lut / (simd * v.rows), k))
    return best


def peak_macs(part: Part, wbits: int, abits: int, model: CostModel) -> dict[str, Any]:
    """The most MAC/s the part can do at ``wbits`` x ``abits`` (an estimate passes its narrowest
    widths): every DSP (packed where legal) plus every LUT spent on the cheapest LUT lane of any kind
    at any unit width (:func:`_lut_per_mac`), at the catalog clock. No design of those widths computes
    more, so ``Estimate.peak_fraction <= 1``."""
    clock = part.clock_mhz * 1e6
    pack = dsp_packing(part.dsp_type, wbits, abits, 1024, narrow=True)  # the best case: an upper bound
    dsp = part.dsp * pack * clock
    per_lane, kind = _lut_per_mac(part, wbits, abits, model)
    lut = part.lut / per_lane * clock
    return {"dsp_macs_per_s": dsp, "lut_macs_per_s": lut, "total_macs_per_s": dsp + lut,
            "lut_per_mac": round(per_lane, 2), "lut_lane": kind, "dsp_packing": pack, "wbits": wbits,
            "abits": abits}


def _notes(layers: list[HwLayer], opts: ArchOptions) -> list[str]:
    by_note: dict[str, list[str]] = {}
    for ly in layers:
        if ly.note:
            by_note.setdefault(ly.note, []).append(ly.name)
    notes = sorted(f"{names[0]}: {note}" if len(names) == 1 else
                   f"{len(names)} layers ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): {note}"
                   for note, names in by_note.items())
    if len(notes) > 6:
        notes = notes[:6] + [f"... and {len(notes) - 6} more layers with notes"]
    return notes + [f"assumed per engine: {opts.engine_lut:g} LUT / {opts.engine_ff:g} FF control; "
                    f"per part shell: {opts.shell_lut:g} LUT / {opts.shell_ff:g} FF; usable share "
                    f"{opts.util_cap:g} of LUT/FF, {opts.mem_cap:g} of block RAM"]


def _fmt(ly: HwLayer) -> str:
    """A compute layer's row formats and lanes; a residual add's stream width (``add 8-bit``); else its op."""
    return " + ".join(f"{g.fmt}@{g.kind}" + (f" {100 * g.fraction:.0f}%" if len(ly.groups) > 1 else "")
                      for g in ly.groups) or (f"add {ly.abits}-bit" if ly.spec.kind == "add" else ly.spec.kind)


def estimate(specs: list[LayerSpec], plan: QuantPlan, part: str | Part = "xc7z020", arch: str = "streaming", *,
             parts: int = 1, fold: str = "auto", target_fps: float | None = None,
             options: ArchOptions | None = None, model: CostModel | None = None,
             core_units: dict[str, int] | None = None) -> Estimate:
    """Estimate ``plan`` on ``parts`` x ``part`` with the ``streaming`` or ``overlay`` template.

    ``fold``: ``plan`` uses each layer's ``mapping`` (pe, simd); ``optimize`` searches the
    folding (fastest that fits, or cheapest meeting ``target_fps``); ``auto`` optimizes
    unless the plan sets a folding on some layer. ``core_units`` fixes the overlay's
    core sizes (``{"dsp": n, "sp2": m}``) instead of sizing them to the part.

    The plan is checked first (:func:`mixq.plan.validate_plan` against the model's
    layers): a plan naming unknown layers, with ``alt_rows`` out of range, empty or
    all-float (which would otherwise be priced as W8A8) raises :class:`PlanError`.
    Layers the plan leaves out are modelled as W8A8 and listed in the notes.
    """
    if arch not in ARCHS:
        raise HardwareError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    if fold not in FOLDS:
        raise HardwareError(f"fold {fold!r} is not one of {', '.join(FOLDS)}")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise HardwareError(f"parts: must be an integer >= 1, got {parts!r}")
    if target_fps is not None and (isinstance(target_fps, bool) or not isinstance(target_fps, int | float)
                                   or not math.isfinite(target_fps) or target_fps <= 0):
        raise HardwareError(f"target_fps: must be a finite number > 0, got {target_fps!r}")
    for s in specs:  # a compute layer capture could not describe (kept with allow_float): never priced as free
        if s.extra.get("float"):
            raise HardwareError(f"estimate: layer {s.name!r} ({s.extra['float']}) is left in float; "
                                "the hardware model cannot price it")
        if s.extra.get("node_kind") == "unsupported":  # an op no stage knows: not priced as free either
            op = str(s.extra.get("op", s.kind))
            raise HardwareError(f"estimate: layer {s.name!r} ({op}) is an op mixq does not know; the hardware model "
                                f"cannot price it{s.extra.get('why', '')}")
    p = get_part(part)
    validate_plan(plan, layers={s.name: s.weight_rows for s in specs if s.is_compute})
    opts = options or ArchOptions()
    cm = model or CostModel.default()
    layers = lower(specs, plan, p)
    if not any(ly.is_compute for ly in layers):
        raise HardwareError("the model has no conv/linear layers to estimate")
    if arch == "overlay":
        if parts != 1:
            raise HardwareError("the multi-FPGA split applies to the streaming template; use --arch streaming")
        return _overlay(plan.model, layers, p, cm, opts, core_units)
    return _streaming(plan.model, specs, layers, p, cm, opts, parts, fold, target_fps)


def _streaming(name: str, specs: list[LayerSpec], layers: list[HwLayer], p: Part, cm: CostModel,
               opts: ArchOptions, parts: int, fold: str, target_fps: float | None) -> Estimate:
    b = budget(p, opts)
    set_in_plan = any(ly.mapping != HwMapping() for ly in layers if ly.is_compute)
    optimize = fold == "optimize" or (fold == "auto" and not set_in_plan) or target_fps is not None
    clock = p.clock_mhz * 1e6
    cuts = st.cut_bits(specs, layers)
    no_fit = ""
    if optimize:
        try:
            design, part_ = st.optimize(layers, specs, p, cm, opts, parts, target_fps)
        except HardwareError as e:
            if target_fps is not None and "not reachable" in str(e):
                raise
            # nothing fits: report the smallest folding, with what overflows and where
            no_fit = str(e)
            design = st.build(layers, {ly.name: (1, 1) for ly in layers if ly.is_compute}, p, cm, opts)
            part_ = None
    else:
        design = st.build(layers, {}, p, cm, opts)
        if opts.ddr_weights == "auto" and parts == 1 and not (design.resources + shell(opts)).fits(b):
            ext = st.externalize(layers, {}, p, cm, opts)
            if ext:
                design = st.build(layers, {}, p, cm, opts, external=ext)
        part_ = st.partition(design, parts, b, cuts, clock / design.cycles, opts.link_gbps, opts)
    used = design.resources + shell(opts) * (len(part_.segments) if part_ else parts)
    total_b = b * parts
    overflows = tuple(Overflow(n, u, a, ly, lu) for n, u, a, ly, lu in st.overflow_lines(design, total_b,
                                                                                           shell(opts) * parts))
    fits = part_ is not None
    les = tuple(LayerEstimate(ly.name, ly.spec.kind, ly.spec.macs, e.cycles, e.cycles / clock, e.pe, e.simd,
                              e.resources, _fmt(ly), "compute", ly.note)
                for ly, e in zip(design.layers, design.engines, strict=True))
    slow = max(les, key=lambda x: x.cycles)
    fps = clock / max(design.cycles, 1)
    bottleneck = f"{slow.name} ({slow.cycles:,} cycles/frame)"
    if design.ddr_cycles > design.engine_cycles and design.ddr_cycles >= design.io_cycles:
        bottleneck = (f"DDR weight streaming ({design.ddr_cycles:,} cycles/frame for "
                      f"{len(design.external)} layers at {p.ddr_gbps:g} GB/s x {opts.ddr_efficiency:g})")
    elif design.io_cycles >= max(design.engine_cycles, design.ddr_cycles):  # the ports bind (layers at them too)
        bottleneck = f"the stream ports ({design.io_cycles:,} cycles/frame: one input pixel, one output code a beat)"
    macs = sum(ly.spec.macs for ly in layers)
    wb, ab = _design_bits(layers)
    pk = peak_macs(p, wb, ab, cm)
    segs = tuple(tuple(les[i].name for i in range(s, e)) for s, e in part_.segments) if part_ else ()
    notes = _notes(layers, opts)
    if design.external:
        notes.append(f"weights from DDR (read once per output pixel): {', '.join(design.external)}")
    if no_fit:
        notes.append(no_fit)
    elif part_ is None and not overflows:
        notes.append(f"no split into {parts} part(s) fits every part and every link ({opts.link_gbps:g} Gb/s)")
    return Estimate(
        model=name, part=p.name, arch="streaming", n_parts=parts, clock_mhz=p.clock_mhz, layers=les,
        resources=used, available=Resources(p.lut * parts, p.ff * parts, p.dsp * parts, p.bram * parts,
                                            p.uram * parts),
        fps=fps, latency_ms=sum(x.cycles for x in les) / clock * 1e3, macs=macs,
        bottleneck=bottleneck, peak_macs_per_s=pk["total_macs_per_s"] * parts,
        peak=pk, fits=fits, overflows=overflows, partition=segs, link_bits=part_.link_bits if part_ else (),
        notes=tuple(notes), ddr_weights=design.external,
        options={"fold": "optimized" if optimize else "plan", "util_cap": opts.util_cap,
                 "link_gbps": opts.link_gbps, "requant": opts.requant, "ddr_weights": opts.ddr_weights})


def _overlay(name: str, layers: list[HwLayer], p: Part, cm: CostModel, opts: ArchOptions,
             core_units: dict[str, int] | None) -> Estimate:
    cores, fixed = ov.size_cores(layers, p, cm, opts, core_units)
    buf_bits = fixed.bram * p.bram_type.bits
    times = [ov.layer_time(ly, cores, p, opts, buf_bits) for ly in layers]
    used = fixed + Resources.total(c.resources for c in cores.values())
    les = tuple(LayerEstimate(ly.name, ly.spec.kind, ly.spec.macs, t.cycles, t.seconds, 0, 0, Resources(),
                              _fmt(ly), t.bound, ly.note) for ly, t in zip(layers, times, strict=True))
    total_s = sum(t.seconds for t in times) or 1e-12
    slow = max(les, key=lambda x: x.seconds)
    b = budget(p, opts)
    over = tuple(Overflow(n, getattr(used, n), getattr(b, n), "overlay cores", getattr(used, n))
                 for n in RESOURCE_NAMES if getattr(used, n) > getattr(b, n) + 1e-9)
    wb, ab = _design_bits(layers)
    pk = peak_macs(p, wb, ab, cm)
    mem_share = sum(t.seconds for t in times if t.bound == "memory") / total_s
    notes = _notes(layers, opts) + [f"DDR {p.ddr_gbps:g} GB/s x {opts.ddr_efficiency:g}; "
                                    f"{100 * mem_share:.0f}% of the frame time is memory-bound"]
    return Estimate(
        model=name, part=p.name, arch="overlay", n_parts=1, clock_mhz=p.clock_mhz, layers=les, resources=used,
        available=Resources(p.lut, p.ff, p.dsp, p.bram, p.uram), fps=1.0 / total_s, latency_ms=total_s * 1e3,
        macs=sum(ly.spec.macs for ly in layers),
        bottleneck=f"{slow.name} ({slow.seconds * 1e3:.3f} ms, {slow.bound}-bound)",
        peak_macs_per_s=pk["total_macs_per_s"], peak=pk, fits=not over, overflows=over,
        cores=tuple(c.to_dict() for c in cores.values()), notes=tuple(notes),
        options={"overlay_simd": opts.overlay_simd, "util_cap": opts.util_cap, "requant": opts.requant})


def apply_folding(plan: QuantPlan, folding: Estimate | dict[str, tuple[int, int]]) -> QuantPlan:
    """A new plan whose layers' ``mapping`` carries the folding (``pe``, ``simd``) of an estimate."""
    fold = folding.folding() if isinstance(folding, Estimate) else folding
    out = plan
    for name, (pe, simd) in fold.items():
        lp = plan.get(name)
        if lp is None:
            continue
        out = out.with_layer(name, lp.with_(mapping=HwMapping(lp.mapping.core, int(pe), int(simd))))
    return out


def layer_names(specs: list[LayerSpec]) -> list[str]:
    return [s.name for s in specs if s.is_compute]


def total_macs(specs: list[LayerSpec]) -> int:
    return sum(s.macs for s in specs if s.is_compute)

