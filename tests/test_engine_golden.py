"""Golden tests: the integer engine equals the hardware-faithful fake-quant model exactly.

For CNV (shipped weights when present), ResNet-18 (random init) and MobileNetV2
(ImageNet weights) under W8A8, W4A4, W4 MSQ (half the rows SP2) and binary weights:
zero differing outputs and zero differing integers in every layer. Against the
ordinary fake-quant model the difference is reported and bounded: each integer layer
run on the fake-quant model's own input codes is within half an accumulator step of
the fake-quant layer (the bias rounding), and the argmax agreement is asserted against
a floor (chaotic 4-bit MobileNetV2 on 32x32 photos amplifies single-code flips).
The fast set runs every config on CNV and one per ImageNet model; the rest is ``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch

from mixq.engine import IntEngine, to_integer
from mixq.engine.faithful import faithful
from mixq.engine.verify import verify
from test_engine_support import CONFIGS, inputs, quantized

# (model, config) -> lowest argmax agreement with the ordinary fake-quant model accepted
FLOORS = {("cnv", c): 0.98 for c in CONFIGS} | {
    # random-init ResNet-18 and 4-bit MobileNetV2 on 32x32 photos are chaotic: one flipped code
    # changes the logits (verify reports it); the exactness against the faithful mode is the claim
    ("resnet18", "w8a8"): 0.75, ("resnet18", "w4a4"): 0.25, ("resnet18", "msq4"): 0.25,
    ("resnet18", "binary"): 0.25, ("mobilenet_v2", "w8a8"): 0.75, ("mobilenet_v2", "w4a4"): 0.0,
    ("mobilenet_v2", "msq4"): 0.0, ("mobilenet_v2", "binary"): 0.25,
}
FAST = {("cnv", c) for c in CONFIGS} | {("resnet18", "w4a4"), ("mobilenet_v2", "w8a8")}
CASES = [pytest.param(m, c, marks=() if (m, c) in FAST else pytest.mark.slow, id=f"{m}-{c}") for m, c in FLOORS]


@pytest.mark.parametrize("model,config", CASES)
def test_engine_equals_faithful(model: str, config: str) -> None:
    q = quantized(model, config)
    _, x = inputs(model)
    x = x[:16] if model == "cnv" else x[:4]
    rep = verify(q, x)
    print(json.dumps({k: v for k, v in rep.items() if k != "layers"}))
    assert rep["exact"], rep
    assert rep["mismatching_outputs"] == 0
    for layer in rep["layers"]:
        assert layer["mismatches"] == 0 and layer["input_mismatches"] == 0, layer
        assert layer["local_max_diff_lsb"] <= 0.5 + 1e-6, layer  # the bias rounding, nothing else
        assert layer["acc_bits"] <= layer["acc_budget"], layer
    assert rep["argmax_agreement_faithful"] == 1.0
    assert rep["argmax_agreement"] >= FLOORS[(model, config)], rep["argmax_agreement"]


@pytest.mark.parametrize("config", ["msq4", "binary"])
def test_shift_add_equals_multiply(config: str) -> None:
    q = quantized("cnv", config)
    _, x = inputs("cnv")
    im = to_integer(q, x)
    a = IntEngine(im, products="shift_add")(x[:8], keep=True)
    b = IntEngine(im, products="multiply")(x[:8], keep=True)
    assert torch.equal(a.codes, b.codes)
    for name in a.values:
        assert torch.equal(a.values[name], b.values[name]), name


def test_faithful_is_a_module_with_the_same_graph() -> None:
    q = quantized("cnv", "w4a4")
    _, x = inputs("cnv")
    im = to_integer(q, x)
    fm = faithful(q, im)
    with torch.no_grad():
        y = fm(x[:4])
    assert y.dtype == torch.float64 and y.shape == (4, 10)
    assert torch.equal(y, IntEngine(im)(x[:4]).real())
    # the original model is untouched and still runs in ordinary fake-quant mode
    assert q(x[:4]).dtype == torch.float32


def test_accumulator_widths_reported() -> None:
    q = quantized("cnv", "w8a8")
    _, x = inputs("cnv")
    acc = to_integer(q, x).accumulators()
    assert [a["layer"] for a in acc] == ["features.0", "features.3", "features.7", "features.10",
                                         "classifier.0", "classifier.3"]
    for a in acc:
        assert 8 < a["acc_bits"] <= a["acc_budget"] == 32
        assert a["rows"] == {"fixed8(signed=True,narrow=True)": a["rows"][next(iter(a["rows"]))]}


def test_deep_residual_stream_stays_within_sum_bits() -> None:
    """ResNet-20's residual stream stays on accumulator grids through nine adds: each exact sum would be wider than
    the last (before: 'requantizing its input needs more than 62 bits' at the classifier). An add whose sum would
    not fit ``sum_bits`` takes a coarser grid; without that cap (``sum_bits=52``) the classifier's input is too wide
    for a 16-bit multiplier in int64 and its requantizer takes a narrower one, never under the output's bits + 3.
    Both are exact against the hardware-faithful model."""
    from mixq import api, zoo
    from mixq.data import calibration_set
    from mixq.engine.arith import signed_bits
    from mixq.graph import fold_bn

    torch.manual_seed(0)
    model = fold_bn(zoo.load("resnet20").eval()).eval()
    x = calibration_set(20, size=32, seed=1)
    q = api.quantize(model, api.default_plan("resnet20", model, x[:16]), x[:16], fold=False)
    capped = to_integer(q, x[:16])
    adds = [n for n in capped.nodes if n.op == "add"]
    assert len(adds) == 9 and max(signed_bits(n.bound) for n in adds) == 40  # the cap binds
    assert not any("mult_bits" in n.attrs for n in capped.nodes)
    wide = to_integer(q, x[:16], sum_bits=52)
    assert max(signed_bits(n.bound) for n in wide.nodes if n.op == "add") > 40
    narrowed = {n.name: n.attrs["mult_bits"] for n in wide.nodes if "mult_bits" in n.attrs}
    assert list(narrowed) == ["fc.input_quant"] and 11 <= narrowed["fc.input_quant"] < 16, narrowed
    fc_in = wide.node("fc.input_quant")
    assert wide.node(fc_in.inputs[0]).bound * int(fc_in.arrays["M"].max()) < 2**62
    for options in ({}, {"sum_bits": 52}):
        rep = verify(q, x[16:], **options)
        assert rep["exact"] and rep["mismatching_outputs"] == 0, options
