"""Which compute layers mixq quantizes, which it refuses by name, and the explicit float opt-in.

Real modules throughout: Conv2d subclasses as published code writes them (a plain subclass, a
TF-"same"-padding wrapper), a Conv3d model, a functional conv on a parameter,
and the zoo models (whose plans must not change).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq import api, zoo
from mixq.engine import verify
from mixq.errors import HardwareError, ModelError
from mixq.graph import COMPUTE_MODULES, capture, classify
from mixq.graph.convert import compute_layer_names, to_quantized
from mixq.hw.estimate import estimate
from mixq.nn import QConv2d, QLinear
from mixq.plan import uniform_plan


class TaggedConv(nn.Conv2d):
    """A subclass with the plain forward (published code tags layers like this)."""

    def __init__(self, cin: int, cout: int, k: int, **kw: object) -> None:
        super().__init__(cin, cout, k, **kw)  # type: ignore[arg-type]
        self.tag = "tagged"


class TaggedLinear(nn.Linear):
    pass


class Conv2dSame(nn.Conv2d):
    """TF "same" padding: pad (possibly asymmetrically) for the input size, then convolve unpadded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        ph = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pw = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ScaledConv(nn.Conv2d):
    """Its own forward computes something a plain conv does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x) + 1.0


def _head(c: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]


def _net(conv: type[nn.Conv2d], stride2: int = 1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(conv(3, 16, 3), nn.ReLU(), conv(16, 32, 3, stride=stride2), nn.ReLU(),
                         nn.MaxPool2d(2), conv(32, 32, 3), nn.ReLU(), *_head(32)).eval()


def _data(n: int = 32, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _old_names(model: nn.Module) -> list[str]:
    """The layer list of the exact-type check this replaces (the zoo plans must not change)."""
    return [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_registry_is_data_over_types() -> None:
    assert COMPUTE_MODULES[nn.Conv2d] is None and COMPUTE_MODULES[nn.Linear] is None
    for t in (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear):
        assert COMPUTE_MODULES[t]
    assert classify(TaggedConv(3, 4, 3)).action == "quantize"  # type: ignore[union-attr]
    assert classify(Conv2dSame(3, 4, 3)).action == "probe"  # type: ignore[union-attr]
    assert classify(nn.LSTM(4, 4)).action == "float"  # type: ignore[union-attr]
    assert classify(nn.ReLU()) is None


def test_plain_forward_subclass_is_quantized_like_its_base() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(TaggedConv(3, 16, 3, padding=1), nn.ReLU(), TaggedConv(16, 16, 3, padding=1, groups=4),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), TaggedLinear(16, 10)).eval()
    x = _data()
    plan = api.default_plan("tagged", model, x)
    assert list(plan.layers) == ["0", "2", "6"] == list(compute_layer_names(model))
    assert "float_layers" not in plan.meta and "converted_layers" not in plan.meta
    q = api.quantize(model, plan, x)
    assert sum(isinstance(m, QConv2d) for m in q.modules()) == 2
    assert sum(isinstance(m, QLinear) for m in q.modules()) == 1
    assert not any(isinstance(m, TaggedConv | TaggedLinear) for m in q.modules())
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.05
    assert verify(q, x[:8])["exact"]


def test_same_padding_wrapper_becomes_a_padded_conv() -> None:
    """normalize writes a TF-"same" conv (stride 1, k 3: padding (1, 1) on any input size) as the plain conv with
    that padding; without normalize, the registry decides it on sample data and records the padding in the plan."""
    from mixq.graph.normalize import normalize
    from mixq.graph.registry import coverage

    model = _net(Conv2dSame)
    x = _data()
    norm = normalize(model, (3, 16, 16))
    assert all(type(norm.get_submodule(n)) is nn.Conv2d and norm.get_submodule(n).padding == (1, 1)
               for n in ("0", "2", "5"))
    plan = api.default_plan("same", model, x)
    assert list(plan.layers) == ["0", "2", "5", "9"] and "converted_layers" not in plan.meta
    q = api.quantize(model, plan, x)
    convs = [m for m in q.modules() if isinstance(m, QConv2d)]
    assert len(convs) == 3 and all(tuple(m.padding) == (1, 1) for m in convs)
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.05
    rep = verify(q, x[:8])
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    # the registry's own path (a model not normalized): decided on the sample, recorded in the plan's meta,
    # which is what to_quantized goes by without sample data
    cov = coverage(model, x)
    assert cov.converted_meta()["0"] == {"as": "Conv2d", "padding": [1, 1]}
    recorded = plan.with_meta(converted_layers=cov.converted_meta())
    assert sum(isinstance(m, QConv2d) for m in to_quantized(model, recorded).modules()) == 3
    with pytest.raises(ModelError, match=r"layer '0' \(Conv2dSame\)"):
        to_quantized(model, plan)


def test_asymmetric_same_padding_becomes_a_pad_and_a_conv() -> None:
    """A stride-2 TF-"same" conv on a 16x16 map pads one pixel, bottom / right only (before: refused as
    asymmetric; EfficientNet's tf_ variants): normalize writes F.pad(0, 1, 0, 1) before the plain conv at the
    recorded input size; quantized and verified bit-exact. The registry alone (no normalize) still refuses it."""
    from mixq.engine import to_integer
    from mixq.graph.normalize import normalize
    from mixq.graph.registry import coverage

    model = _net(Conv2dSame, stride2=2)
    x = _data()
    norm = normalize(model, (3, 16, 16))
    assert type(norm.get_submodule("2")) is nn.Conv2d and norm.get_submodule("2").padding == (0, 0)
    (pad,) = [n for n in norm.graph.nodes if n.target is F.pad]
    assert pad.args[1] == [0, 1, 0, 1] and [u.target for u in pad.users] == ["2"]
    with torch.no_grad():
        assert torch.allclose(norm(x), model(x), rtol=1e-5, atol=1e-6)
    plan = api.default_plan("same2", model, x)
    assert list(plan.layers) == ["0", "2", "5", "9"] and "float_layers" not in plan.meta
    q = api.quantize(model, plan, x)
    assert verify(q, x[:8])["exact"]
    assert "pad" in [n.op for n in to_integer(q, x[:2]).nodes]
    assert "asymmetric" in coverage(model, x).floats["2"][1]
    assert type(normalize(model).get_submodule("2")) is Conv2dSame  # no input shape: no padding to write
    odd = normalize(model, (3, 15, 15))  # another size: its own padding (15 -> 8 at stride 2: one pixel each side)
    assert type(odd.get_submodule("2")) is nn.Conv2d and not [n for n in odd.graph.nodes if n.target is F.pad]


def test_custom_forward_subclass_is_refused() -> None:
    model = _net(ScaledConv)
    x = _data()
    for call in (lambda: api.default_plan("scaled", model, x),
                 lambda: api.quantize(model, uniform_plan("scaled", _old_names(model), None, None), x)):
        with pytest.raises(ModelError, match=r"layer '0' \(ScaledConv\) is not supported yet"):
            call()


def _conv3d_net() -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.seq = nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1))
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.stem(x))
            y = F.relu(self.seq(y.unsqueeze(2))).squeeze(2)
            return self.fc(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize(("make", "name", "tname"), [(_conv3d_net, "seq", "Conv3d")])
def test_unsupported_compute_modules_are_refused_then_allowed(make: object, name: str, tname: str) -> None:
    model = make()  # type: ignore[operator]
    x = _data(16)
    line = rf"layer '{name}' \({tname}\) is not supported yet .*; mixq would leave it in float"
    with pytest.raises(ModelError, match="^default_plan: " + line):
        api.default_plan("m", model, x)
    partial = uniform_plan("m", _old_names(model), api.W8, api.A8, signed_inputs=api.signed_inputs(model, x))
    with pytest.raises(ModelError, match="^quantize: " + line):
        api.quantize(model, partial, x)
    with pytest.raises(ModelError, match="^quantize: " + line):
        to_quantized(model, partial)
    with pytest.raises(ModelError, match=rf"^capture: layer '{name}' \({tname}\) is not supported yet"):
        capture(model, (3, 16, 16))
    # the explicit opt-in: the plan says what it leaves in float, and why
    plan = api.default_plan("m", model, x, allow_float=True)
    assert list(plan.layers) == _old_names(model)
    assert list(plan.meta["float_layers"]) == [name] and plan.meta["float_layers"][name].startswith(tname)
    q = api.quantize(model, plan, x)  # the plan's meta accepts the float layer
    assert sum(isinstance(m, QConv2d | QLinear) for m in q.modules()) == len(plan.layers)
    assert type(q.get_submodule(name)).__name__ == tname
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.1
    assert api.quantize(model, partial, x, allow_float=[name]) is not None
    # capture marks it; the hardware estimate refuses to price it as free
    specs = capture(model, (3, 16, 16), allow_float=True)
    marked = [s for s in specs if s.extra.get("float")]
    assert [s.name for s in marked] == [name] and marked[0].kind == "other"
    with pytest.raises(HardwareError, match=rf"layer '{name}' \({tname}: .*\) is left in float"):
        estimate(specs, plan)


def test_functional_conv_on_a_parameter_is_refused() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, padding=1)

    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.ReLU(), *_head(8)).eval()
    x = _data(8)
    with pytest.raises(ModelError, match=r"^default_plan: layer '0' \(Block, F.conv2d on 0.weight\)"):
        api.default_plan("fn", model, x)
    plan = api.default_plan("fn", model, x, allow_float=True)
    assert list(plan.layers) == ["4"] and "0" in plan.meta["float_layers"]


ZOO = ["cnv", "resnet20", "resnet18", "mobilenet_v2", "vgg16"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_plans_unchanged(name: str) -> None:
    model = zoo.load(name).eval()
    c, h, w = zoo.input_shape(name)
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    plan = api.default_plan(name, model, x)
    old = _old_names(model)
    before = uniform_plan(name, old, api.W8, api.A8, signed_inputs=api.signed_inputs(model, x))
    assert list(plan.layers) == old and plan == before and dict(plan.meta) == dict(before.meta)
    q = to_quantized(model, plan, sample=x)
    assert sum(isinstance(m, QConv2d | QLinear) for m in q.modules()) == len(old)
    assert [s for s in capture(model, (c, h, w)) if s.extra.get("float")] == []


# ----------------------------------------------------------------------------- subclasses on a derived weight


class MaskedConv(nn.Conv2d):
    """XDenseNet's X-convolution: a fixed random mask on the weight (pytorchcv's ``XConv2d``)."""

    def __init__(self, cin: int, cout: int, k: int, **kw: object) -> None:
        super().__init__(cin, cout, k, padding=1, **kw)  # type: ignore[arg-type]
        self.mask = nn.Parameter((torch.rand_like(self.weight) > 0.5).float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.mul(self.mask), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class SignConv(nn.Conv2d):
    """A binarized weight, one scale per row (XNOR-Net style)."""

    def __init__(self, cin: int, cout: int, k: int, **kw: object) -> None:
        super().__init__(cin, cout, k, padding=1, **kw)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, torch.sign(self.weight) * scale, self.bias)


class StdConv(nn.Conv2d):
    """Weight standardization (BiT's ``StdConv2d``)."""

    def __init__(self, cin: int, cout: int, k: int, **kw: object) -> None:
        super().__init__(cin, cout, k, padding=1, **kw)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaskedLinear(nn.Linear):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.register_buffer("mask", torch.tril(torch.ones(cout, cin)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, 2 * self.bias)


class InputScaledConv(nn.Conv2d):
    """A weight that depends on the input: no plain layer computes it."""

    def __init__(self, cin: int, cout: int, k: int, **kw: object) -> None:
        super().__init__(cin, cout, k, padding=1, **kw)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * x.abs().mean(), self.bias)


def _derived_net(conv: type[nn.Conv2d]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(conv(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), conv(16, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), MaskedLinear(16, 10)).eval()


@pytest.mark.parametrize("conv", [MaskedConv, SignConv, StdConv], ids=["mask", "sign", "standardized"])
def test_subclass_on_a_derived_weight_becomes_the_plain_layer(conv: type[nn.Conv2d]) -> None:
    """A conv / linear whose forward is the base layer on a weight derived from its own tensors (before: refused as
    'a Conv2d subclass whose own forward mixq cannot reproduce') is normalized to the plain layer with that weight:
    same outputs; quantized, BatchNorm folded into it, verified bit-exact."""
    from mixq.graph.normalize import normalize

    model = _derived_net(conv)
    x = _data()
    norm = normalize(model)
    assert [type(norm.get_submodule(n)) for n in ("0", "3", "7")] == [nn.Conv2d, nn.Conv2d, nn.Linear]
    with torch.no_grad():
        assert torch.allclose(norm(x), model(x), rtol=1e-5, atol=1e-6)
        if conv is SignConv:  # the binarized weight itself: one magnitude per row
            w = norm.get_submodule("0").weight
            assert torch.equal(w.abs().amax(dim=(1, 2, 3)), w.abs().amin(dim=(1, 2, 3)))
    plan = api.default_plan("derived", model, x)
    assert list(plan.layers) == ["0", "3", "7"] and "float_layers" not in plan.meta
    q = api.quantize(model, plan, x)
    with torch.no_grad():
        assert _rel(q(x), model(x)) < 0.05
    assert verify(q, x[:8])["exact"]


class InputScaledSameConv(Conv2dSame):
    """A "same"-padding conv whose weight depends on the input: no padded plain conv computes it either."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [0, 1, 0, 1])
        return F.conv2d(x, self.weight * x.abs().mean(), self.bias, self.stride, 0, self.dilation, self.groups)


def test_subclass_whose_weight_depends_on_the_input_stays_refused() -> None:
    from mixq.graph.normalize import normalize

    model = _derived_net(InputScaledConv)
    assert type(normalize(model).get_submodule("0")) is InputScaledConv
    same = _net(InputScaledSameConv, stride2=2)
    assert type(normalize(same, (3, 16, 16)).get_submodule("2")) is InputScaledSameConv
    with pytest.raises(ModelError, match=r"layer '0' \(InputScaledConv\) is not supported yet"):
        api.default_plan("dynamic", model, _data())
    same = _net(Conv2dSame)  # a padding that depends on the input size stays the registry's to decide
    assert type(normalize(same).get_submodule("0")) is Conv2dSame
