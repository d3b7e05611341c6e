"""Layer-sequential overlay (MSQ's heterogeneous GEMM cores; a minimalist single-engine design).

One array of cores is reused by every layer, weights and activations come from
DDR layer by layer. Each weight-format group of a layer runs on its core: SP2
(or PoT, ternary, fixed-on-LUT) rows on a LUT core, fixed-point rows on a DSP core
(two rows per DSP when packing is legal), the two cores side by side; a layer's
compute time is that of the slower core, so the row share ρ that balances the
cores maximises throughput (MSQ). A core is ``units`` dot units of ``simd`` lanes;
a packed DSP unit computes two rows.

Per layer: ``cycles = max_core ceil(rows_core * out_pixels / rows_parallel) *
ceil(row_length / simd)`` (rows and pixels are independent dot products; also
bounded by the core's requantizers, one per ``requant_share`` rows) plus a fixed set-up; DDR traffic = weights + input +
output activations (weights re-streamed per input tile when neither fits its
on-chip buffer); the layer takes ``max(compute, traffic / bandwidth)`` — the
roofline. Residual adds cost their DDR traffic; pooling is fused into the
requantizer path.

Core sizing (unless given): the LUT cores share the LUTs left after the DSP
core and the shell in proportion to their MAC load; the DSP core's size is the
one (from all DSPs down) that gives the most MACs per cycle in total, since
every core's requantizers also take DSPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mixq.errors import HardwareError
from mixq.hw.cost import CostModel, Resources
from mixq.hw.kinds import PE_KINDS, STREAM_OPS, shares_act
from mixq.hw.lower import HwLayer
from mixq.hw.parts import Part
from mixq.hw.pe import PeConfig
from mixq.hw.units import ArchOptions, budget, requant_kind, shell, split_rows


@dataclass(frozen=True)
class Core:
    """One compute core of the overlay."""

    key: str  # "dsp" or the LUT PE kind ("sp2", "pot", "fixed_lut", ...)
    kind: str
    wbits: int
    abits: int
    signed_act: bool
    simd: int
    units: int
    acc_len: int
    resources: Resources = Resources()
    requant_units: int = 0

    @property
    def rows_parallel(self) -> int:
        return self.units * PE_KINDS[self.kind].rows

    def unit(self) -> PeConfig:
        return PeConfig(self.kind, self.wbits, self.abits, self.simd, acc_len=self.acc_len,
                        signed_act=self.signed_act)

    def to_dict(self) -> dict[str, object]:
        return {"core": self.key, "pe_kind": self.kind, "wbits": self.wbits, "abits": self.abits,
                "simd": self.simd, "units": self.units, "rows_parallel": self.rows_parallel,
                "macs_per_cycle": self.rows_parallel * self.simd, "requantizers": self.requant_units,
                "resources": self.resources.to_dict()}


@dataclass(frozen=True)
class LayerTime:
    cycles: int
    compute_s: float
    memory_s: float
    traffic_bits: int

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s > self.compute_s else "compute"


def core_key(kind: str) -> str:
    """The core a PE kind's rows run on: one DSP core for every DSP kind, one LUT core per LUT kind."""
    return "dsp" if PE_KINDS[kind].core == "dsp" else kind


def _core_specs(layers: list[HwLayer]) -> dict[str, dict[str, object]]:
    """Per core key: the widest formats its rows need and its MAC load."""
    out: dict[str, dict[str, object]] = {}
    for ly in layers:
        for g, r in zip(ly.groups, split_rows(ly.spec.weight_rows, ly.groups), strict=True):
            k = core_key(g.kind)
            c = out.setdefault(k, {"kind": g.kind, "w": 0, "a": 0, "signed": False, "len": 1, "macs": 0.0})
            if PE_KINDS[g.kind].rows > PE_KINDS[str(c["kind"])].rows:  # packed where any layer packs
                c["kind"] = g.kind
            c["w"] = max(int(c["w"]), g.wbits)  # type: ignore[call-overload]
            c["a"] = max(int(c["a"]), g.abits)  # type: ignore[call-overload]
            c["signed"] = bool(c["signed"]) or g.signed_act
            c["len"] = max(int(c["len"]), ly.spec.row_length)  # type: ignore[call-overload]
            c["macs"] = float(c["macs"]) + r * ly.spec.row_length * ly.spec.out_pixels  # type: ignore[arg-type]
    return out


def _requant_cfg(core: Core, opts: ArchOptions) -> PeConfig:
    return PeConfig(requant_kind(opts), accw=core.unit().acc_bits, out_bits=8)


def _with_units(c: Core, units: int, part: Part, model: CostModel, opts: ArchOptions) -> Core:
    rows = units * PE_KINDS[c.kind].rows
    nreq = math.ceil(rows / max(opts.requant_share, 1)) if units else 0
    res = model.pe(c.unit(), part.dsp_type) * units + model.pe(_requant_cfg(c, opts), part.dsp_type) * nreq
    return Core(c.key, c.kind, c.wbits, c.abits, c.signed_act, c.simd, units, c.acc_len, res, nreq)


def _largest(c: Core, avail: Resources, part: Part, model: CostModel, opts: ArchOptions) -> Core:
    """The most units of core ``c`` that fit ``avail``."""
    u = model.pe(c.unit(), part.dsp_type)
    bound = [avail.lut / u.lut if u.lut else math.inf, avail.ff / u.ff if u.ff else math.inf,
             avail.dsp / u.dsp if u.dsp else math.inf]
    n = max(0, int(min(bound)))
    while n > 0 and not _with_units(c, n, part, model, opts).resources.fits(avail):
        n = int(n * 0.98)
    return _with_units(c, n, part, model, opts)


def size_cores(layers: list[HwLayer], part: Part, model: CostModel, opts: ArchOptions,
               units: dict[str, int] | None = None) -> tuple[dict[str, Core], Resources]:
    """Cores for the formats ``layers`` use, sized to the part (or to ``units`` per core key)."""
    specs = _core_specs(layers)
    if not specs:
        raise HardwareError("overlay: the model has no compute layers")
    cores = {k: Core(k, str(v["kind"]), int(v["w"]), int(v["a"]), bool(v["signed"]),  # type: ignore[call-overload]
                     opts.overlay_simd, 0, int(v["len"])) for k, v in specs.items()}  # type: ignore[call-overload]
    b = budget(part, opts)
    buf = Resources(bram=math.floor(b.bram * opts.overlay_buffer_share))
    fixed = shell(opts) + buf
    if units is not None:
        unknown = set(units) - set(cores)
        if unknown:
            raise HardwareError(f"overlay: no core {sorted(unknown)} in this plan; cores: {sorted(cores)}")
        return {k: _with_units(c, units.get(k, 0), part, model, opts) for k, c in cores.items()}, fixed
    avail = b + fixed * -1.0
    lut_keys = [k for k in cores if k != "dsp"]
    if "dsp" in cores:
        # the DSP core's requantizers and the LUT cores' compete for DSPs: try every DSP-core size
        # from the largest down and keep the split with the most MACs per cycle
        top = _largest(cores["dsp"], avail, part, model, opts)
        best: tuple[float, dict[str, Core]] | None = None
        for n in range(top.units, -1, -1):
            d = _with_units(cores["dsp"], n, part, model, opts)
            luts = _split_lut(cores, lut_keys, specs, avail + d.resources * -1.0, part, model, opts)
            macs = d.rows_parallel * d.simd + sum(c.rows_parallel * c.simd for c in luts.values())
            if best is None or macs > best[0]:
                best = (macs, {"dsp": d, **luts})
            if not lut_keys:
                break
        assert best is not None
        cores = best[1]
    else:
        cores = _split_lut(cores, lut_keys, specs, avail, part, model, opts)
    return cores, fixed


def _split_lut(cores: dict[str, Core], keys: list[str], specs: dict[str, dict[str, object]], avail: Resources,
               part: Part, model: CostModel, opts: ArchOptions) -> dict[str, Core]:
    if not keys:
        return {}
    load = {k: float(specs[k]["macs"]) * model.pe(cores[k].unit(), part.dsp_type).lut  # type: ignore[arg-type]
            for k in keys}
    total = sum(load.values()) or 1.0
    out = {}
    for k in keys:
        f = load[k] / total
        share = Resources(avail.lut * f, avail.ff * f, avail.dsp, avail.bram, avail.uram)
        out[k] = _largest(cores[k], share, part, model, opts)
    return out


def layer_time(ly: HwLayer, cores: dict[str, Core], part: Part, opts: ArchOptions, buf_bits: float) -> LayerTime:
    """Time of one layer on the overlay (compute vs. DDR roofline)."""
    s = ly.spec
    clock = part.clock_mhz * 1e6
    bw = part.ddr_gbps * 8e9 * opts.ddr_efficiency
    a_in = math.prod(s.in_shape) * ly.abits if s.in_shape else 0
    a_out = math.prod(s.out_shape) * ly.out_bits if s.out_shape else 0
    if not ly.is_compute:
        op = STREAM_OPS.get(s.kind)
        traffic = op.ddr_passes * a_out if op is not None else 0  # an add: two inputs read, one output written
        return LayerTime(0, 0.0, traffic / bw, traffic)
    cycles = 0
    wbits = 0
    for g, r in zip(ly.groups, split_rows(s.weight_rows, ly.groups), strict=True):
        if r <= 0:
            continue
        c = cores[core_key(g.kind)]
        if c.units <= 0:
            raise HardwareError(f"overlay: layer {ly.name} needs the {c.key} core, which got no units on "
                                f"{part.name}")
        rp = c.rows_parallel if shares_act(s.kind) else c.units  # depthwise rows share no activation to pack
        # output rows and output pixels are independent dot products: spare row units take other pixels
        cyc = math.ceil(r * s.out_pixels / rp) * math.ceil(s.row_length / c.simd)
        cyc = max(cyc, math.ceil(r * s.out_pixels / max(c.requant_units, 1)))
        cycles = max(cycles, cyc)
        wbits += r * s.row_length * g.wbits
    cycles += opts.overlay_layer_cycles
    half = buf_bits / 2
    traffic = wbits + a_in + a_out
    if a_in > half and wbits > half:
        traffic += wbits * (math.ceil(a_in / half) - 1)
    return LayerTime(cycles, cycles / clock, traffic / bw, traffic)
