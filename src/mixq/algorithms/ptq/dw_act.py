"""Per-channel ranges for a depthwise layer's input, at no hardware cost: equalize the activation.

A per-tensor activation quantizer gives every channel the step of the widest one. Where the layer
that reads the activation is depthwise and the one that writes it is an ordinary conv (MobileNet's
expand → depthwise pair), both sides have per-row weight scales along that channel: the writer's
output row ``c`` and the depthwise row ``c``. Dividing the writer's row ``c`` (and its bias) by
``s_c`` and multiplying the depthwise row ``c`` by ``s_c`` leaves the float function unchanged (a
ReLU6 between them becomes a per-channel clip at ``6 / s_c``, :class:`~mixq.algorithms.ptq.cle.ClippedReLU`)
and every layer's integer weights unchanged (each row's scale absorbs ``s_c``), but the activation
between them now has channel ranges ``a_c / s_c``. With ``s_c = a_c / max(a)`` every channel spans
the widest channel's range, so one per-tensor step serves each channel as a per-channel step would;
clipping (e.g. ``act_ranges="output"``) then works on the equalized tensor.

This is cross-layer equalization with the whole balance given to the activation, restricted to the
pairs where it costs the weights nothing. On pairs whose second layer sums over input channels the
same move would widen that layer's per-row weight ranges (measured to hurt at 4-bit weights:
benchmarks/results/ptq_mobilenetv2_lowbit.md, "activation-aware CLE"), so they are left alone.

``a_c`` is the channel's ``max |x|`` on the calibration data; channels that never fire keep
``s_c = 1``, and ``s_c`` is at least :data:`MIN_SCALE` (a channel at a tiny fraction of the widest one
is not blown up without bound). Switched on by naming it in a recipe,
``stages=("dw_act_equalize",)``; it runs after CLE, before the MSQ rows are assigned and the layers swapped.

Measured on MobileNetV2 (benchmarks/results/ptq_mobilenetv2_lowbit.md): W4A8 GPTQ +0.65 ± 1.41 points of
agreement, W4A4 GPTQ with MSE + output-aware clipping -3.60 ± 1.99 — so it is not in any default recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mixq.algorithms.ptq._common import input_channel_ranges
from mixq.algorithms.ptq.cle import (
    ClippedReLU,
    EqualizationPair,
    _layer,
    _scale_stats,
    divide_rows,
    find_pairs,
    multiply_columns,
    replace_relu6,
)
from mixq.graph.spec import is_depthwise

if TYPE_CHECKING:
    from torch import nn

    from mixq.algorithms.ptq.pipeline import PTQState

#: The smallest ``s_c``: a channel is widened at most this many times (2^8).
MIN_SCALE = 1.0 / 256.0


def depthwise_pairs(model: nn.Module, pairs: list[EqualizationPair]) -> list[EqualizationPair]:
    """The pairs whose second layer is depthwise (one input channel per output row) and first is not."""
    def dw(name: str) -> bool:
        m = _layer(model, name)
        return isinstance(m, torch.nn.Conv2d) and is_depthwise(m.groups, m.in_channels, m.out_channels)
    return [p for p in pairs if p.spatial == 1 and dw(p.second) and not dw(p.first)]


def equalizing_scales(ranges: torch.Tensor) -> torch.Tensor:
    """``s_c = a_c / max(a)``, at least :data:`MIN_SCALE`; 1 for channels with no range.

    >>> equalizing_scales(torch.tensor([4.0, 1.0, 0.0, 0.001])).tolist()
    [1.0, 0.25, 1.0, 0.00390625]
    """
    top = ranges.max()
    if not top > 0:
        return torch.ones_like(ranges)
    s = (ranges / top).clamp(min=MIN_SCALE)
    return torch.where(ranges > 0, s, torch.ones_like(s))


@torch.no_grad()
def apply(s: PTQState) -> PTQState:
    """Equalize the input of every depthwise layer fed by an ordinary conv (see the module doc)."""
    pairs = depthwise_pairs(s.folded, find_pairs(s.folded, s.input_shape))
    out, pairs = replace_relu6(s.folded, pairs, "clip")
    ranges = input_channel_ranges(out, [p.second for p in pairs], s.calib, s.recipe.batch_size)
    widened = {}
    for p in pairs:
        sc = equalizing_scales(ranges[p.second])  # float64, as CLE's scales
        divide_rows(_layer(out, p.first), sc)
        multiply_columns(_layer(out, p.second), sc)
        if p.act is not None:
            act = out.get_submodule(p.act)
            if isinstance(act, ClippedReLU):
                act.upper.copy_((act.upper.double() / sc).to(act.upper.dtype))
        _scale_stats(s.stats, p.first, sc)
        widened[p.second] = round(float(1.0 / sc.min()), 3)
    s.fm = out
    s.details["dw_act_equalize"] = {"pairs": len(pairs), "largest_widening": widened}
    return s
