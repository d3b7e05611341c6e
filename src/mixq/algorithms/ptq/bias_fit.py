"""Weight steps that let every bias fit the accumulator (TFLite's rule for an int32 bias).

The hardware adds a layer's bias on its accumulator grid ``s_x * step_r`` (input scale times the row's
weight step), so its code is ``b_r / (s_x * step_r)``. Where a layer's input range is tiny — a random-init
network, a squeeze-excite pool of near-zero features — that code can pass any accumulator: the integer
engine then refuses the layer ("accumulator needs 37 bits ... the budget is 32"). This stage, the last of
every recipe, enlarges the weight scales of each such row (every row format's scale, by the same factor)
just enough that ``|b_r| / (s_x * step_r) <= 2**(ACC_BITS - 2)``: half the accumulator's range is left
for the products. The weights of that row are then coarser, which costs nothing that matters there: the
bias dominates a row whose input is that small. No other row changes; on a trained network the rule
rarely acts at all (the figures are in the stage's details).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mixq.nn import QConv2d, QLinear

if TYPE_CHECKING:
    from mixq.algorithms.ptq.pipeline import PTQState

#: the accumulator width the rule keeps the bias within (the integer engine's default budget)
ACC_BITS = 32


@torch.no_grad()
def fit_bias_steps(model: nn.Module, acc_bits: int = ACC_BITS) -> dict[str, Any]:
    """Enlarge the weight scales of the rows whose bias code would pass ``2**(acc_bits - 2)``;
    ``{layer: {"rows": n, "factor": largest}}`` of the layers changed."""
    limit = 2.0 ** (acc_bits - 2)
    changed: dict[str, Any] = {}
    for name, m in model.named_modules():
        if not isinstance(m, QConv2d | QLinear) or m.bias is None or m.input_quant is None or not m.formats:
            continue
        if m.input_quant.mode != "quant" or m.w_scales.shape[1:] != m._scale_shape():
            continue
        s_x = float(m.input_quant.scale)
        step = m.row_steps()
        need = m.bias.detach().abs().to(torch.float64) / (s_x * limit)
        # (a margin of 2**-16 for the float32 the scales are kept in)
        factor = torch.where(need > step, need / step * (1 + 2.0**-16), torch.ones_like(step))
        if not s_x > 0 or not bool((factor > 1).any()) or not bool(torch.isfinite(factor).all()):
            continue
        m.w_scales.mul_(factor.to(m.w_scales.dtype).reshape(1, *m._scale_shape()))
        changed[name] = {"rows": int((factor > 1).sum()), "factor": float(factor.max())}
    return changed


def apply(s: PTQState) -> PTQState:
    s.details["bias_fit"] = fit_bias_steps(s.quantized)
    return s
