"""Residual-stream equalization (mixq.algorithms.ptq.streams): which streams, exactness, effect."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq import zoo
from mixq.algorithms.ptq import Recipe, quantize_report
from mixq.algorithms.ptq.cle import ChannelStats, column_ranges
from mixq.algorithms.ptq.streams import (
    consumer_input_ranges,
    equalize_streams,
    find_streams,
    orthogonal,
    rotate_streams,
    stream_scales,
)
from mixq.errors import MixqError
from mixq.formats import FixedPoint
from mixq.graph import fold_bn
from mixq.plan import LayerPlan, QuantPlan
from mixq.quant import sqnr_db

pytestmark = pytest.mark.usefixtures("one_thread")


class Residual(nn.Module):
    """stem -> [stream] -> block (conv, relu, conv) added back -> head conv -> relu -> gap -> fc.

    Stream channel 0 is made an outlier (its producers' rows scaled up by 40, its consumers'
    columns down by 40: the float function is the same, the activation range is not).
    """

    def __init__(self, outlier: float = 40.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 16, 1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 5)
        self.act = nn.ReLU()
        with torch.no_grad():
            for m in (self.stem, self.c1, self.c2, self.head, self.fc):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                assert m.bias is not None
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            for m in (self.stem, self.c2):
                m.weight[0] *= outlier
                assert m.bias is not None
                m.bias[0] *= outlier
            for m in (self.c1, self.head):
                m.weight[:, 0] /= outlier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        s = s + self.c2(torch.relu(self.c1(s)))
        return self.fc(self.act(self.head(s)).mean(dim=(2, 3)))


SHAPE = (3, 12, 12)


def _x(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_stream_scales_formula() -> None:
    s = stream_scales(torch.tensor([9.0, 4.0]), torch.tensor([1.0, 16.0]), alpha=0.5)
    assert torch.allclose(s, torch.tensor([3.0, 0.5]))
    assert torch.allclose(stream_scales(torch.tensor([9.0]), torch.tensor([4.0]), alpha=1.0), torch.tensor([9.0]))
    with pytest.raises(MixqError, match="alpha"):
        stream_scales(torch.ones(1), torch.ones(1), alpha=1.5)


def test_find_streams_of_a_residual_net() -> None:
    (st,) = find_streams(Residual(), SHAPE)
    assert st.producers == ("stem", "c2")
    assert st.consumers == ("c1", "head")
    assert st.channels == 8


def test_streams_reaching_relu6_or_the_output_are_left_alone() -> None:
    # a ReLU6 on the stream is not positively homogeneous: the stream must not be rescaled
    class Relu6Stream(Residual):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stem(x)
            s = torch.clamp(s + self.c2(torch.relu(self.c1(s))), 0, 6)
            return self.fc(self.head(s).mean(dim=(2, 3)))

    class OutputStream(Residual):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stem(x)
            return s + self.c2(torch.relu(self.c1(s)))

    assert find_streams(Relu6Stream(), SHAPE) == []
    assert find_streams(OutputStream(), SHAPE) == []
    assert find_streams(zoo.load("cnv", pretrained=False).eval(), (1, 28, 28)) == []  # no residual adds


def test_mobilenet_v2_streams() -> None:
    m = fold_bn(zoo.load("mobilenet_v2", pretrained=False).eval(), (3, 224, 224)).eval()
    streams = find_streams(m, (3, 224, 224))
    # the five stages with residual blocks: 24, 32, 64, 96 and 160 channels
    assert [s.channels for s in streams] == [24, 32, 64, 96, 160]
    last = streams[-1]
    assert last.producers == ("features.14.conv.2", "features.15.conv.2", "features.16.conv.2")
    assert last.consumers == ("features.15.conv.0.0", "features.16.conv.0.0", "features.17.conv.0.0")


def _folded(name: str, shape: tuple[int, ...] = (3, 64, 64)) -> tuple[nn.Module, torch.Tensor]:
    """The zoo's ``name`` at random init, BN folded, and four random inputs."""
    torch.manual_seed(0)
    return fold_bn(zoo.load(name, pretrained=False).eval(), shape).eval(), torch.randn(4, *shape)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_equalization_keeps_the_float_function(name: str) -> None:
    m, x = _folded(name)
    eq, _, scales = equalize_streams(m, (3, 64, 64), x)
    assert scales, "no stream was equalized"
    assert any(float((s - 1).abs().max()) > 1e-3 for s in scales.values())
    with torch.no_grad():
        a, b = m(x), eq(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


def test_equalization_balances_activation_and_weight_ranges() -> None:
    m = Residual().eval()
    x = _x()
    (st,) = find_streams(m, SHAPE)
    before = consumer_input_ranges(m, [st], x)
    eq, _, _ = equalize_streams(m, SHAPE, x, alpha=0.5)
    after = consumer_input_ranges(eq, [st], x)
    a0 = torch.stack([before[c] for c in st.consumers]).amax(0)
    a1 = torch.stack([after[c] for c in st.consumers]).amax(0)
    w1 = torch.stack([column_ranges(eq.get_submodule(c).weight).double() for c in st.consumers]).amax(0)
    assert float(a0.max() / a0.median()) > 20  # the outlier channel
    assert float(a1.max() / a1.median()) < 3
    assert torch.allclose(a1, w1, rtol=1e-4)  # alpha = 0.5: both at sqrt(a w)


def test_equalization_rescales_producer_stats() -> None:
    m = Residual().eval()
    stats = {"stem": ChannelStats(torch.ones(8), torch.full((8,), 2.0)), "c1": ChannelStats(torch.ones(16),
                                                                                              torch.ones(16))}
    _, new, scales = equalize_streams(m, SHAPE, _x(), stats=stats)
    s = scales["stem"]
    assert torch.allclose(new["stem"].mean, 1 / s)
    assert torch.allclose(new["stem"].std, 2 / s)
    assert new["c1"] is stats["c1"]  # not a producer


def _a8_plan(m: nn.Module) -> QuantPlan:
    names = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
    return QuantPlan(model="residual", layers={
        n: LayerPlan(weight=None, act=FixedPoint(8, signed=True)) for n in names})


def test_equalization_lowers_activation_quantization_error() -> None:
    m = Residual().eval()
    x, calib = _x(64, seed=2), _x(64, seed=3)
    with torch.no_grad():
        ref = m(x)
    plain = quantize_report(m, _a8_plan(m), calib, "minmax").model
    smooth = quantize_report(m, _a8_plan(m), calib, "minmax", stream_equalize=True)
    assert smooth.details["streams"] == 1
    with torch.no_grad():
        e0, e1 = float(sqnr_db(ref, plain(x))), float(sqnr_db(ref, smooth.model(x)))
    assert e1 > e0 + 6.0, (e0, e1)


# --- rotation (stream_rotate) ---

def test_orthogonal_matrices() -> None:
    for n in (1, 8, 24, 160):
        q = orthogonal(n, 3)
        assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    h = orthogonal(16, 0)  # randomized Hadamard: every entry +-1/4
    assert torch.allclose(h.abs(), torch.full((16, 16), 0.25, dtype=torch.float64))
    assert not torch.equal(orthogonal(24, 0), orthogonal(24, 1))


def test_linear_streams_of_mobilenet_v2() -> None:
    m = fold_bn(zoo.load("mobilenet_v2", pretrained=False).eval(), (3, 224, 224)).eval()
    streams = find_streams(m, (3, 224, 224), linear=True)
    # the five residual streams and the two projection -> expansion links without an add
    assert [s.channels for s in streams] == [16, 24, 32, 64, 96, 160, 320]
    assert (streams[0].producers, streams[0].consumers) == (("features.1.conv.1",), ("features.2.conv.0.0",))
    assert (streams[-1].producers, streams[-1].consumers) == (("features.17.conv.2",), ("features.18.0",))
    assert streams[-2] == find_streams(m, (3, 224, 224))[-1]


def test_linear_streams_stop_at_nonlinear_ops() -> None:
    (st,) = find_streams(Residual(), SHAPE, linear=True)  # only an add between producers and consumers
    assert (st.producers, st.consumers) == (("stem", "c2"), ("c1", "head"))

    class ReluStream(Residual):  # a ReLU after the add (as in ResNets): a rotation does not commute with it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stem(x)
            s = torch.relu(s + self.c2(torch.relu(self.c1(s))))
            return self.fc(self.act(self.head(s)).mean(dim=(2, 3)))

    assert find_streams(ReluStream(), SHAPE) != []  # rescaling passes the ReLU
    assert find_streams(ReluStream(), SHAPE, linear=True) == []


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_rotation_keeps_the_float_function(name: str) -> None:
    m, x = _folded(name)
    rot, streams = rotate_streams(m, (3, 64, 64), seed=0)
    assert len(streams) == (0 if name == "resnet18" else 7)  # ResNet's streams pass ReLUs
    changed = {n.removesuffix(".weight") for n, p in m.named_parameters()
               if n.endswith(".weight") and not torch.equal(p, rot.get_parameter(n))}
    assert changed == {n for s in streams for n in s.producers + s.consumers}
    with torch.no_grad():
        a, b = m(x), rot(x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_a_bad_rotation_seed_names_the_field(bad: object) -> None:
    with pytest.raises(MixqError, match="recipe.stream_rotate"):
        Recipe(stream_rotate=bad)  # type: ignore[arg-type]


def test_rotation_spreads_an_outlier_channel() -> None:
    m, x = Residual().eval(), _x()
    rot, (st,) = rotate_streams(m, SHAPE, seed=0)
    a0 = torch.stack(list(consumer_input_ranges(m, [st], x).values())).amax(0)
    a1 = torch.stack(list(consumer_input_ranges(rot, [st], x).values())).amax(0)
    assert float(a0.max() / a0.median()) > 20 and float(a1.max() / a1.median()) < 2
    calib = _x(64, seed=3)
    res = quantize_report(m, _a8_plan(m), calib, "minmax", stream_rotate=0)
    assert res.details["rotated_streams"] == 1
    plain = quantize_report(m, _a8_plan(m), calib, "minmax").model
    with torch.no_grad():
        ref = m(x)
        assert float(sqnr_db(ref, res.model(x))) > float(sqnr_db(ref, plain(x))) + 6.0
