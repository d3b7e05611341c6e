"""What FINN builds between and around its engines (``ArchOptions(dataflow="finn")``), found in a design.

:mod:`mixq.hw.dataflow` prices each piece; this module finds where a FINN build has them, from the
engines' foldings and the layers' widths:

* ``axis``: Vivado HLS's register slice on every AXI-Stream port of an HLS node — an MVAU's ``in0``
  (``SIMD * A`` bits), ``weights`` (``PE * SIMD * W``) and ``out`` (``PE`` output codes, or ``PE``
  accumulators where the output leaves the network: FINN's ``noActivation``), its sliding-window
  generator's input and output (``SIMD * A`` each), a max pool's input and output (FINN's
  ``StreamingMaxPool_Batch`` takes every channel of a pixel per word: ``C * A``);
* ``dwc``: a width converter in front of a node whose input width differs from its producer's output width
  (FINN's ``InsertDWC``);
* ``iodma``: the input IODMA on the first layer and the output IODMA on a layer whose output leaves the
  network (FINN's ``InsertIODMA``: ``graph.input[0]`` and ``graph.output[0]``).

The folding optimizer costs each engine alone; these pieces are added to the design it picks.
"""

from __future__ import annotations

import math

from mixq.hw import dataflow as df
from mixq.hw.cost import CostModel, Resources
from mixq.hw.kinds import shares_act
from mixq.hw.lower import HwLayer
from mixq.hw.parts import Part
from mixq.hw.units import EngineCost, split_rows


def _has_window(layer: HwLayer) -> bool:
    s = layer.spec
    return len(s.in_shape) == 3 and (s.kernel[0] > 1 or s.kernel[1] > 1)


def _acc_bits(layer: HwLayer, simd: int, part: Part, model: CostModel) -> int:
    s = layer.spec
    length = max(s.row_length, 1)
    rows = split_rows(s.weight_rows, layer.groups)
    return max((model.dot(g.kind, g.wbits, g.abits, simd, length, g.signed_act, part.dsp_type)[1]
                for g, r in zip(layer.groups, rows, strict=True) if r > 0), default=0)


def widths(layer: HwLayer, en: EngineCost, part: Part, model: CostModel) -> tuple[int, int, int]:
    """Bits of a node's input, weight and output streams (weights: 0 for a stream operator)."""
    s = layer.spec
    if not layer.is_compute:
        if s.kind == "maxpool" and s.in_shape:
            w = s.in_shape[0] * max(layer.abits, 1)
        else:
            w = max(en.pe, 1) * max(layer.abits, 1)
        return w, 0, w
    pes = sum(en.pe_split)
    simd = max(en.simd, 1)
    in_w = simd * layer.abits * (1 if shares_act(s.kind) else pes)
    w_w = sum(simd * g.wbits * p for g, p in zip(layer.groups, en.pe_split, strict=True))
    out_bits = max(1, layer.out_bits) if s.outputs else _acc_bits(layer, simd, part, model)
    return in_w, w_w, pes * out_bits


def _consumes(c: HwLayer, p: HwLayer, names: set[str]) -> bool:
    """``c`` reads ``p``'s output: directly, or through an operator lowering dropped (not in ``names``,
    such as a flatten) that both name."""
    return c.name in p.spec.outputs or bool((set(p.spec.outputs) & set(c.spec.inputs)) - names)


def glue(layers: tuple[HwLayer, ...] | list[HwLayer], engines: tuple[EngineCost, ...], part: Part,
         model: CostModel) -> tuple[EngineCost, ...]:
    """``engines`` with FINN's register slices, width converters and IODMAs added to their detail."""
    w = [widths(ly, en, part, model) for ly, en in zip(layers, engines, strict=True)]
    names = {ly.name for ly in layers}
    out: list[EngineCost] = []
    for i, (ly, en) in enumerate(zip(layers, engines, strict=True)):
        in_w, w_w, out_w = w[i]
        axis = df.regslice(in_w) + df.regslice(w_w) + df.regslice(out_w)
        if ly.is_compute and _has_window(ly):  # the sliding-window generator's two ports
            swg = max(en.simd, 1) * ly.abits
            axis = axis + df.regslice(swg) * 2
        dwc = Resources.total(df.width_converter(w[j][2], in_w) for j, p in enumerate(layers[:i])
                                if _consumes(ly, p, names))
        dma = Resources()
        if i == 0:
            dma = dma + df.iodma("in", in_w, math.prod(ly.spec.in_shape) * ly.abits)
        if not ly.spec.outputs:
            words = max(1, math.prod(ly.spec.out_shape)) // max(sum(en.pe_split), 1)
            dma = dma + df.iodma("out", out_w, words * out_w)
        detail = {**en.detail, "axis": axis, "dwc": dwc, "iodma": dma}
        out.append(EngineCost(en.cycles, Resources.total(detail.values()), en.pe, en.simd, en.pe_split, detail))
    return tuple(out)
