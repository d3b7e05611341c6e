"""How a layer's rows are laid out on a streaming layer engine (FINN's MVAU/VVAU shape).

The layer's rows are grouped by PE kind exactly as the hardware model lowers them
(:func:`mixq.hw.lower.pe_kind`: fixed point on DSPs, two rows per DSP where packing is
legal; SP2 rows on shift-add LUT lanes; power of two on shift lanes), and the PEs are
split over the groups by the model's own rule (:func:`mixq.hw.units.compute_engine`),
so the generated engine is the circuit the model costs. Each group is one *core*:
``units`` dot units of ``simd`` lanes; per input vector a core runs ``tiles`` passes of
``fold = ceil(row_length / simd)`` beats, each pass computing ``units * outs`` rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mixq.errors import MixqError
from mixq.formats import format_from_dict
from mixq.graph.spec import LayerSpec, is_depthwise
from mixq.hw.cost import CostModel
from mixq.hw.kinds import PE_KINDS, WEIGHT_KINDS, shares_act
from mixq.hw.lower import HwLayer, RowGroup, pe_kind
from mixq.hw.parts import get_part
from mixq.hw.pe import PeConfig
from mixq.hw.units import ArchOptions, EngineCost, compute_engine
from mixq.rtl.layerdata import LayerData
from mixq.rtl.pe import decode_weight
from mixq.rtl.pe import latency as pe_latency

SUPPORTED_KINDS: tuple[str, ...] = tuple(k for k, v in PE_KINDS.items() if v.layer_engine)
# weight formats whose codes the layer engine stores as PE codes
SUPPORTED_FORMATS: tuple[str, ...] = tuple(k for k, v in WEIGHT_KINDS.items() if v.layer_engine)


@dataclass(frozen=True)
class Core:
    """The rows of one PE kind and the dot units that compute them."""

    kind: str
    wbits: int
    units: int
    outs: int  # rows per unit and pass (2 for a packed DSP)
    tiles: int
    slots: np.ndarray  # (tiles, units * outs): layer row per slot, -1 for padding
    cfg: PeConfig

    @property
    def latency(self) -> int:
        """Cycles from a beat at the PE inputs to its sum being in ``acc`` (:func:`mixq.rtl.pe.latency`)."""
        return pe_latency(self.cfg)


@dataclass(frozen=True)
class Layout:
    data: LayerData
    simd: int
    fold: int
    abits: int
    signed_act: bool
    cores: tuple[Core, ...]
    estimate: EngineCost
    spec: LayerSpec
    part: str

    @property
    def tiles(self) -> int:
        return max(c.tiles for c in self.cores)


def weight_level(kind: str, wbits: int, code: int) -> int:
    """The weight level a PE code stands for: the lane's multiplier (:func:`mixq.rtl.pe.decode_weight`), or for a
    lane whose sum is unsigned (XNOR: ``PeKind.signed_sum`` false) the bipolar level ``2 * code - 1``."""
    v = decode_weight(kind, wbits, code)
    return v if PE_KINDS[kind].signed_sum else 2 * v - 1


def encode_weight(kind: str, wbits: int, value: int, layer: str) -> int:
    """The PE code of an engine weight level (inverse of :func:`weight_level`)."""
    table = _codes(kind, wbits)
    if value not in table:
        raise MixqError(f"layer {layer!r}: weight {value} is not a level of the {kind} PE with {wbits} bits")
    return table[value]


def pad_code(kind: str, wbits: int) -> int:
    """The code of padding lanes (their activation is 0): the level 0, or where 0 is no level (XNOR) +1, whose
    XNOR with a 0 activation adds nothing to the popcount."""
    table = _codes(kind, wbits)
    return table[0] if 0 in table else table[1]


def popcount_offsets(kind: str, weight: np.ndarray) -> np.ndarray:
    """Per row, what an unsigned-sum (XNOR) lane's accumulator exceeds the dot product by: with weights
    ``w`` in {-1, +1} and activations ``a`` in {0, 1}, the popcount of ``XNOR(w > 0, a)`` is
    ``sum(w * a) + #(w == -1)`` (a lane with ``a = 0`` counts 1 exactly when ``w = -1``); 0 for signed lanes."""
    if PE_KINDS[kind].signed_sum:
        return np.zeros(weight.shape[0], dtype=np.int64)
    return (weight.reshape(weight.shape[0], -1) < 0).sum(axis=1).astype(np.int64)


_CODE_CACHE: dict[tuple[str, int], dict[int, int]] = {}


def _codes(kind: str, wbits: int) -> dict[int, int]:
    key = (kind, wbits)
    if key not in _CODE_CACHE:
        t: dict[int, int] = {}
        for c in range(1 << wbits):
            t.setdefault(weight_level(kind, wbits, c), c)
        _CODE_CACHE[key] = t
    return _CODE_CACHE[key]


def layer_spec(d: LayerData) -> LayerSpec:
    """The :class:`LayerSpec` of the layer (what the hardware model reads)."""
    if d.op == "linear":
        f = int(d.weight.shape[1])
        return LayerSpec(d.name, "linear", (f,), (d.rows,), f, d.rows, macs=f * d.rows)
    cin = int(d.x.shape[1])
    kind = "dwconv" if is_depthwise(d.groups, cin, d.rows) else "conv"
    out = (d.rows, int(d.y.shape[2]), int(d.y.shape[3]))
    return LayerSpec(d.name, kind, tuple(int(v) for v in d.x.shape[1:]), out, cin, d.rows, d.kernel, d.stride,
                     d.padding, d.groups, macs=d.row_length * d.rows * out[1] * out[2],
                     extra={"dilation": tuple(d.dilation)} if tuple(d.dilation) != (1, 1) else {})


def plan_layout(d: LayerData, pe: int, simd: int, core: str = "auto", part: str = "xc7z020",
                model: CostModel | None = None) -> Layout:
    """Lay the rows of ``d`` out on ``pe`` PEs of ``simd`` lanes (``core``: fixed point on ``dsp`` or ``lut``)."""
    p = get_part(part)
    spec = layer_spec(d)
    abits = int(d.in_fmt.get("bits", 8))
    signed = bool(d.in_fmt.get("signed", False))
    if d.in_fmt.get("kind") != "fixed":
        raise MixqError(f"layer {d.name!r}: input format {d.in_fmt} is not fixed point; the layer engine "
                        "needs integer activation codes")
    groups: list[RowGroup] = []
    members: list[np.ndarray] = []
    kinds: list[tuple[str, int]] = []
    for i, fd in enumerate(d.formats):
        rows = np.flatnonzero(d.row_format == i)
        if rows.size == 0:
            continue
        fmt = format_from_dict(fd)
        wk = WEIGHT_KINDS.get(fmt.kind)
        if wk is None or not wk.layer_engine or (wk.lane is not None and not wk.fits_lane(fmt)):
            raise MixqError(f"layer {d.name!r}: rows in format {fmt} have no datapath in the layer engine "
                            f"(rows in {', '.join(SUPPORTED_FORMATS)} only; SP2 of two terms)")
        wbits = int(fmt.storage_bits)
        kind, wbits, _ = pe_kind(fmt, core, None, spec, p, wbits, abits, signed)
        if kind not in SUPPORTED_KINDS:
            raise MixqError(f"layer {d.name!r}: rows in format {fmt} map to PE kind {kind!r}, which the "
                            f"layer engine does not generate (supported: {', '.join(SUPPORTED_KINDS)})")
        if not shares_act(spec.kind) or d.groups > 1:  # rows of different groups share no activation: no packing
            kind = PE_KINDS[kind].single_row or kind
        groups.append(RowGroup(kind, wbits, abits, signed, rows.size / d.rows, str(fmt)))
        members.append(rows)
        kinds.append((kind, wbits))
    hw = HwLayer(spec, tuple(groups), abits, int(d.out_fmt.get("bits", 8)))
    est = compute_engine(hw, pe, simd, p, model or CostModel.default(), ArchOptions())
    simd = est.simd
    fold = math.ceil(d.row_length / simd)
    cores = []
    for (kind, wbits), rows, eff in zip(kinds, members, est.pe_split, strict=True):
        outs = PE_KINDS[kind].rows
        units = max(1, eff // outs)
        n = units * outs
        tiles = math.ceil(rows.size / n)
        slots = np.full(tiles * n, -1, dtype=np.int64)
        slots[: rows.size] = rows
        cfg = PeConfig(kind, wbits, abits, simd, acc_len=d.row_length, signed_act=signed)
        for r in rows:  # every weight must be a level of the PE
            for v in np.unique(d.weight[r]):
                encode_weight(kind, wbits, int(v), d.name)
        cores.append(Core(kind, wbits, units, outs, tiles, slots.reshape(tiles, n), cfg))
    if not cores:
        raise MixqError(f"layer {d.name!r}: no rows")
    return Layout(d, simd, fold, abits, signed, tuple(cores), est, spec, part)
