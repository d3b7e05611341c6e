"""Percentile activation clipping: the example of a PTQ stage added as one file.

Min-max calibration sets each activation range by the largest value seen, so one outlier in the
calibration batches widens every step of the grid. This stage runs before ``calibrate`` and switches
every activation quantizer whose plan says ``minmax`` to the ``percentile`` observer of
:mod:`mixq.quant.observers` (the 99.99th percentile of ``|x|``, or of ``max(x, 0)`` after a ReLU),
so calibration clips the rarest values instead. Quantizers whose plan names another observer
(``mse``, ``kl``, ``percentile``) keep it.

Switched on by naming it in a recipe: ``quantize(model, plan, calib, recipe="minmax",
stages=("act_percentile",))`` or the named recipe ``minmax_pct``. Its measured effect is in
benchmarks/results/ptq_cnv.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mixq.graph.convert import act_quantizers

if TYPE_CHECKING:
    from mixq.algorithms.ptq.pipeline import PTQState


def apply(s: PTQState) -> PTQState:
    """Give every min-max activation quantizer of the quantized model the percentile observer."""
    switched = 0
    for a in act_quantizers(s.quantized):
        if a.observer_kind == "minmax":
            a.observer_kind = "percentile"
            switched += 1
    s.details["act_percentile"] = {"quantizers": switched}
    return s
