"""Unsupported layers and bad inputs fail with a ModelError naming the layer and its type;
accumulator budgets are enforced (error) or saturate; functional ops convert; verify is JSON-able."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mixq import api
from mixq.engine import EngineConfig, IntEngine, to_integer
from mixq.engine.faithful import faithful
from mixq.engine.verify import verify
from mixq.errors import ModelError
from mixq.formats import parse_format
from mixq.graph.convert import to_quantized
from mixq.plan import LayerPlan
from test_engine_support import tiny


def _quantize(model: nn.Module, x: torch.Tensor, **plan_kw: object) -> nn.Module:
    plan = api.default_plan("m", model, x, weight=parse_format("fixed8n"), act=parse_format("ufixed8"))
    for name, lp in plan_kw.items():
        plan = plan.with_layer(name, lp)  # type: ignore[arg-type]
    return api.quantize(model, plan, x, fold=False)


def _net(act: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), act, nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


X = torch.randn(8, 3, 8, 8)


@pytest.mark.parametrize("act,kind", [(nn.Softmax(dim=1), "Softmax"), (nn.PReLU(4), "PReLU"),  # a slope per channel
                                      (nn.BatchNorm2d(4, track_running_stats=False), "BatchNorm2d")])
def test_unsupported_layer_is_named(act: nn.Module, kind: str) -> None:
    q = _quantize(_net(act), X)
    with pytest.raises(ModelError, match=rf"layer '1' \({kind}\)"):
        to_integer(q, X)


def test_float_compute_layer_is_named() -> None:
    q = api.quantize(_net(nn.ReLU()), api.default_plan("m", _net(nn.ReLU()), X).with_layer(
        "3", LayerPlan()), X, fold=False)
    with pytest.raises(ModelError, match=r"layer '3' \((Linear|QLinear)\)"):
        to_integer(q, X)


def test_float_activations_are_named() -> None:
    q = _quantize(_net(nn.ReLU()), X, **{"3": LayerPlan(weight=parse_format("fixed8n"))})
    with pytest.raises(ModelError, match=r"layer '3' \(QLinear\): its input activations are not quantized"):
        to_integer(q, X)


def test_uncalibrated_model_is_named() -> None:
    m = _net(nn.ReLU())
    q = to_quantized(m, api.default_plan("m", m, X))
    with pytest.raises(ModelError, match=r"layer '0' \(QConv2d\).*calibrate"):
        to_integer(q, X)


def test_unsupported_function_is_named() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.conv(x))

    q = _quantize(Odd().eval(), X)
    with pytest.raises(ModelError, match=r"layer 'exp' \(function exp\)"):
        to_integer(q, X)


def test_accumulator_budget_error_and_saturation() -> None:
    q, x = tiny("w8a8")
    with pytest.raises(ModelError, match=r"layer 'stem' \(QConv2d\): accumulator needs \d+ bits .* the budget is 12 "
                                         r"bits; widen acc_bits \(--acc-bits\) or use overflow='saturate' "
                                         r"\(--overflow saturate\)"):
        to_integer(q, x, acc_bits=12)
    im = to_integer(q, x, acc_bits=14, overflow="saturate", acc_frac_bits=0)
    sat = [a for a in im.accumulators() if a["saturate"]]
    assert sat and all(a["acc_bits"] > a["acc_budget"] == 14 for a in sat)
    r = IntEngine(im)(x * 4)
    assert sum(r.saturated.values()) > 0
    with torch.no_grad():
        assert torch.equal(faithful(q, im)(x * 4), r.real())  # the faithful mode saturates identically


def test_config_is_validated() -> None:
    with pytest.raises(ModelError, match="overflow"):
        EngineConfig(overflow="wrap")
    with pytest.raises(ModelError, match="mult_bits"):
        EngineConfig(mult_bits=40)
    with pytest.raises(ModelError, match="acc_bits"):
        EngineConfig(acc_bits={"a": 100})
    for bad in (8, 60, True, 40.0):
        for key in ("sum_bits", "pool_bits"):
            with pytest.raises(ModelError, match=rf"engine.{key}: must be an integer in \[16, 52\]"):
                EngineConfig(**{key: bad})


@pytest.mark.parametrize("config", ["w8a8", "msq8", "binary"])
def test_all_ops_exact_on_tiny_net(config: str) -> None:
    q, x = tiny(config)
    im = to_integer(q, x)
    assert [n.op for n in im.nodes].count("add") == 1 and any(n.op == "cat" for n in im.nodes)
    rep = verify(q, x)
    json.dumps(rep)  # plain data
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    assert all(layer["local_max_diff_lsb"] <= 0.5 + 1e-6 for layer in rep["layers"])
    assert rep["argmax_agreement"] >= 0.75
