"""The dw_act_equalize stage: per-channel ranges at a depthwise layer's input through row scales alone."""

from __future__ import annotations

import torch
from torch import nn

from mixq.algorithms.ptq import quantize_report
from mixq.algorithms.ptq.dw_act import MIN_SCALE, equalizing_scales
from mixq.engine import verify
from mixq.formats import FixedPoint
from mixq.graph import capture
from mixq.nn import QConv2d
from mixq.plan import uniform_plan


class _Net(nn.Module):
    """expand (ReLU6) -> depthwise (ReLU6) -> project, with channel ranges 100x apart after the expand."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            gains = torch.logspace(0, -2, 8)
            self.expand.weight.mul_(gains[:, None, None, None])
            self.expand.bias.mul_(gains)
            self.dw.weight.div_(gains[:, None, None, None])  # every channel matters as much downstream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.act2(self.dw(self.act1(self.expand(x)))))


def _setup() -> tuple[nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    net = _Net().eval()
    names = [s.name for s in capture(net, (3, 10, 10)) if s.is_compute]
    plan = uniform_plan("net", names, FixedPoint(8, narrow=True), FixedPoint(4, signed=False), signed_inputs=names[:1])
    return net, plan, torch.randn(128, 3, 10, 10) * 2


def test_scales_equalize_to_the_widest_channel_within_bounds() -> None:
    s = equalizing_scales(torch.tensor([2.0, 0.5, 0.0, 1e-6], dtype=torch.float64))
    assert s.tolist() == [1.0, 0.25, 1.0, MIN_SCALE]


def test_the_function_is_unchanged_and_the_depthwise_input_is_equalized() -> None:
    net, plan, x = _setup()
    r = quantize_report(net, plan, x, "minmax", stages=("dw_act_equalize",))
    assert r.details["dw_act_equalize"]["pairs"] == 1  # expand -> dw; dw -> project sums over channels: left
    dw = r.model.get_submodule("dw")
    assert isinstance(dw, QConv2d)
    for m in r.model.modules():  # quantizers off: the float function through the equalized layers
        if hasattr(m, "input_quant"):
            m.input_quant.mode = "float"
    seen: list[torch.Tensor] = []
    h = dw.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        ref = net(x)
        d = float((r.model(x) - ref).abs().max())
    h.remove()
    ch = seen[0].abs().amax(dim=(0, 2, 3))
    assert float(ch.min() / ch.max()) > 0.97  # every channel at the widest one's range (was ~1e-2 of it)
    assert d < 0.05 * float(ref.abs().max())  # the original function, up to the 8-bit weights' rounding


def test_it_lowers_the_4bit_activation_error() -> None:
    net, plan, x = _setup()
    base = quantize_report(net, plan, x, "minmax")
    eq = quantize_report(net, plan, x, "minmax", stages=("dw_act_equalize",))
    with torch.no_grad():
        ref = net(x)
        e_base = float((base.model(x) - ref).pow(2).mean())
        e_eq = float((eq.model(x) - ref).pow(2).mean())
    assert e_eq < 0.5 * e_base, (e_eq, e_base)


def test_the_integer_engine_reproduces_the_equalized_model_exactly() -> None:
    net, plan, x = _setup()
    r = quantize_report(net, plan, x, "minmax", stages=("dw_act_equalize",))
    rep = verify(r.model, x[:16])
    assert rep["exact"] and rep["mismatching_outputs"] == 0
