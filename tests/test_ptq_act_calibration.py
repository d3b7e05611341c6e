"""Recipe.act_calibration: activation ranges observed on the float network instead of its nearest-rounded weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq.algorithms.ptq import get_recipe, quantize_report
from mixq.algorithms.ptq.calibrate import activation_scales
from mixq.errors import MixqError
from mixq.formats import FixedPoint
from mixq.graph import capture
from mixq.nn import QConv2d, float_weights
from mixq.plan import QuantPlan, uniform_plan


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 4, 1)).eval()


def _plan(net: nn.Module, weight: FixedPoint | None) -> QuantPlan:
    names = [s.name for s in capture(net, (3, 8, 8)) if s.is_compute]
    plan = uniform_plan("net", names, FixedPoint(2, narrow=True), FixedPoint(8, signed=False), signed_inputs=names[:1])
    return QuantPlan(model="net", layers={n: dataclasses.replace(lp, weight=weight) for n, lp in plan.items()})


def test_float_weights_runs_the_float_op_and_restores_the_formats() -> None:
    net = _net()
    q = quantize_report(net, _plan(net, FixedPoint(2, narrow=True)), torch.randn(16, 3, 8, 8), "plan").model
    conv = q.get_submodule("2")
    assert isinstance(conv, QConv2d)
    x = torch.rand(4, 8, 8, 8)
    conv.input_quant = None  # the weights alone
    with torch.no_grad():
        rounded = conv(x)
        with float_weights(q):
            exact = conv(x)
        after = conv(x)
        want = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.equal(exact, want)
    assert float((rounded - want).abs().max()) > 1e-2  # 2-bit weights do differ
    assert torch.equal(after, rounded) and len(conv.formats) == 1
    with pytest.raises(RuntimeError), float_weights(q):
        raise RuntimeError("boom")
    assert len(conv.formats) == 1  # restored on an exception too


@pytest.mark.parametrize("ranges", ["observer", "output"])
def test_float_calibration_observes_the_float_network(ranges: str) -> None:
    net, x = _net(), torch.randn(64, 3, 8, 8)
    w2 = _plan(net, FixedPoint(2, narrow=True))
    on_float = activation_scales(quantize_report(net, w2, x, "plan", act_calibration="float",
                                                 act_ranges=ranges).model)
    act_only = activation_scales(quantize_report(net, _plan(net, None), x, "plan", act_ranges=ranges).model)
    on_rounded = activation_scales(quantize_report(net, w2, x, "plan", act_ranges=ranges).model)
    assert on_float == act_only  # the ranges of the float network, exactly
    assert on_float[0] == on_rounded[0]  # the image: no weights before it
    assert any(abs(a - b) > 1e-3 * abs(b) for a, b in zip(on_float[1:], on_rounded[1:], strict=True))


def test_the_field_is_validated() -> None:
    assert get_recipe("gptq").act_calibration == "quantized"
    with pytest.raises(MixqError, match="act_calibration"):
        get_recipe("gptq", act_calibration="weights")


def test_msq_with_minifloat_rows_after_float_calibration_is_bit_exact_in_the_engine() -> None:
    from mixq.engine import verify
    from mixq.formats import parse_format

    net, x = _net(), torch.randn(32, 3, 8, 8)
    names = [s.name for s in capture(net, (3, 8, 8)) if s.is_compute]
    plan = uniform_plan("net", names, parse_format("fixed4n"), FixedPoint(8, signed=False), signed_inputs=names[:1],
                        weight_alt=parse_format("minifloat_e2m1"), alt_ratio=0.5)
    r = quantize_report(net, plan, x, "gptq", weight_scales="output", msq_rows="output_auto", act_calibration="float")
    assert sum(len(r.plan[n].alt_rows or ()) for n in names) > 0  # some rows did choose E2M1
    rep = verify(r.model, x[:8])
    assert rep["exact"] and rep["mismatching_outputs"] == 0
