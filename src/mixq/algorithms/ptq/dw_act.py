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

``stages=("dw_act_clip",)`` is per-channel activation *clipping* on the same pairs: a depthwise layer's
output channel ``c`` reads input channel ``c`` only, so its output error splits by channel, and each
channel's clip ``a_c`` is searched on its own output channel's error (``a_c = r · max|x_c|``, ``r`` on the
grid of :data:`CLIP_RATIOS`, at the activation format the plan gives the depthwise layer). Equalizing
with those ``a_c`` gives every channel the clip of the widest one, ``T = max(a)``, and the ReLU between
the layers becomes a clip at ``T`` on every channel, so a per-tensor quantizer whose range is ``T`` steps
each channel as its own searched clip would. (With a plain ReLU, or nothing, between the layers there is no
clip module to carry ``T``: the searched clips then set the equalization only, and the quantizer's range is its
observer's.) It runs before ``swap``, after ``first_act_8bit`` when both
are named (extra stages run in the registry's order), so it searches at the width that stage plans.

Measured on MobileNetV2 (benchmarks/results/ptq_mobilenetv2_lowbit.md): W4A8 GPTQ +0.65 ± 1.41 points of
agreement, W4A4 GPTQ with MSE + output-aware clipping -3.60 ± 1.99 — so it is not in any default recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from mixq.algorithms.ptq._common import input_channel_ranges, run_hooked
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
from mixq.quant import fake_quant
from mixq.quant.observers import unit_max

if TYPE_CHECKING:
    from torch import nn

    from mixq.algorithms.ptq.pipeline import PTQState

#: The smallest ``s_c``: a channel is widened at most this many times (2^8).
MIN_SCALE = 1.0 / 256.0

#: The clip ratios ``r`` (of each channel's ``max |x|``) that ``dw_act_clip`` tries.
CLIP_RATIOS: tuple[float, ...] = tuple(0.2 + 0.05 * i for i in range(17))

#: Calibration inputs the per-channel clip search runs on.
CLIP_IMAGES = 32


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
def searched_clips(model: nn.Module, fmts: dict[str, Any], ranges: dict[str, torch.Tensor], data: torch.Tensor,
                   batch_size: int, ratios: tuple[float, ...] = CLIP_RATIOS) -> dict[str, torch.Tensor]:
    """Per depthwise layer in ``fmts`` (name -> its input's format), per channel, the clip ``r · ranges[c]``
    whose fake quantization of that channel alone (step ``clip / unit_max``) gives the least squared error
    in the layer's output channel over ``data`` (ties: the wider clip). Float64, as ``ranges``."""
    errs = {n: torch.zeros(len(ratios), ranges[n].numel(), dtype=torch.float64) for n in fmts}

    def hook_for(name: str) -> Callable[..., None]:
        layer = model.get_submodule(name)
        assert isinstance(layer, torch.nn.Conv2d)
        step = ranges[name].float().clamp(min=1e-12).view(1, -1, 1, 1) / unit_max(fmts[name])

        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _o: object) -> None:
            x = inp[0].detach()
            for i, r in enumerate(ratios):
                d = fake_quant(x, fmts[name], step * r) - x
                e = layer._conv_forward(d, layer.weight, None)
                errs[name][i] += (e.double() ** 2).sum(dim=(0, 2, 3))
        return hook

    run_hooked(model, {n: hook_for(n) for n in fmts}, data, batch_size)
    grid = torch.tensor(ratios, dtype=torch.float64)
    out = {}
    for n, e in errs.items():
        best = (e - e.min(0).values).le(0).double() * grid[:, None]  # the widest ratio at the least error
        out[n] = best.max(0).values * ranges[n]
    return out


@torch.no_grad()
def _equalize(s: PTQState, search: bool) -> PTQState:
    """Equalize the input of every depthwise layer fed by an ordinary conv, on its channels' ranges
    (``search=False``) or searched clips (see the module doc)."""
    pairs = depthwise_pairs(s.folded, find_pairs(s.folded, s.input_shape))
    out, pairs = replace_relu6(s.folded, pairs, "clip")
    ranges = input_channel_ranges(out, [p.second for p in pairs], s.calib, s.recipe.batch_size)
    if search:
        fmts = {p.second: s.plan[p.second].act for p in pairs
                if p.second in s.plan.layers and s.plan[p.second].act is not None}
        clips = searched_clips(out, fmts, ranges, s.calib[:CLIP_IMAGES], s.recipe.batch_size)
        pairs = [p for p in pairs if p.second in clips]
        ranges = clips
    widened = {}
    for p in pairs:
        sc = equalizing_scales(ranges[p.second])  # float64, as CLE's scales
        divide_rows(_layer(out, p.first), sc)
        multiply_columns(_layer(out, p.second), sc)
        if p.act is not None:
            act = out.get_submodule(p.act)
            if isinstance(act, ClippedReLU):
                upper = act.upper.double() / sc
                if search:  # every channel clipped at the widest one's searched clip
                    upper = upper.clamp(max=float(ranges[p.second].max()))
                act.upper.copy_(upper.to(act.upper.dtype))
        _scale_stats(s.stats, p.first, sc)
        widened[p.second] = round(float(1.0 / sc.min()), 3)
    s.fm = out
    details: dict[str, Any] = {"pairs": len(pairs), "largest_widening": widened}
    if search:  # the one clip every channel now has, per layer
        details["clip"] = {p.second: round(float(ranges[p.second].max()), 4) for p in pairs}
    s.details["dw_act_clip" if search else "dw_act_equalize"] = details
    return s


def apply(s: PTQState) -> PTQState:
    """Equalize every depthwise layer's input on its channels' ``max |x|`` (stage ``dw_act_equalize``)."""
    return _equalize(s, search=False)


def apply_clip(s: PTQState) -> PTQState:
    """Per-channel clips searched on each depthwise output channel's error, then equalized (``dw_act_clip``)."""
    return _equalize(s, search=True)
