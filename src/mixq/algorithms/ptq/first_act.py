"""A higher-precision first activation: the first activation inside the network kept at 8 bits.

At 4-bit activations the tensor after the first layer is the most fragile one of a CNN: it still
carries the image's fine detail, over few channels, at the highest resolution, and in MobileNetV2 it
feeds a depthwise layer, where no sum over input channels averages the rounding out. This stage runs
before ``swap`` and rewrites the plan: the layer(s) reading the first compute layer's output (the
second layer in forward order) take their input at :data:`FIRST_ACT_BITS` bits — same format kind,
same signedness — so the quantized model, the artifact and the hardware estimate all see the wider
activation. Layers already at least that wide are left alone.

Switched on by naming it in a recipe: ``quantize(model, plan, calib, recipe="brecq",
stages=("first_act_8bit",))``. Its measured effect: benchmarks/results/ptq_mobilenetv2_lowbit.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mixq.algorithms.ptq._common import layers_in_forward_order
from mixq.formats import FixedPoint

if TYPE_CHECKING:
    from mixq.algorithms.ptq.pipeline import PTQState

FIRST_ACT_BITS = 8


def apply(s: PTQState) -> PTQState:
    """Widen the planned input of the second layer in forward order to :data:`FIRST_ACT_BITS` bits."""
    order = [n for n in layers_in_forward_order(s.folded, s.calib[:1]) if n in s.plan.layers]
    widened: list[str] = []
    if len(order) >= 2:
        name = order[1]
        lp = s.plan[name]
        act = lp.act
        if isinstance(act, FixedPoint) and act.bits < FIRST_ACT_BITS:
            s.plan = s.plan.with_layer(name, lp.with_(act=FixedPoint(FIRST_ACT_BITS, signed=act.signed)))
            widened.append(name)
    s.details["first_act_8bit"] = {"layers": widened, "bits": FIRST_ACT_BITS}
    return s
