"""AdaRound: the rounding grid for any level set, the annealed optimization, and a whole model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq.algorithms.ptq import AdaRoundConfig, adaround, adaround_layer, optimize_rounding, rounding_grid
from mixq.algorithms.ptq.adaround import beta_at, init_logits, rectified_sigmoid
from mixq.errors import MixqError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph.convert import calibrate, to_quantized
from mixq.nn import QConv2d, QLinear
from mixq.plan import LayerPlan, QuantPlan

F4 = FixedPoint(4, narrow=True)
SP2 = SumOfPowers(4)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_rounding_grid_brackets_every_weight() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=g)
    scheme = torch.tensor([0, 1, 0, 1, 1, 0])
    scales = torch.stack([torch.full((6, 1), float(w.abs().max()) / 7), torch.full((6, 1), float(w.abs().max()))])
    lo, gap, rest = rounding_grid(w, (F4, SP2), scheme, scales)
    hi = lo + gap
    assert bool((lo <= w.double() + 1e-9).all() and (w.double() <= hi + 1e-9).all())
    torch.testing.assert_close(lo + rest * gap, w.double(), rtol=0, atol=1e-9)
    # both ends are levels of the row's own format
    for r in range(6):
        fmt, s = ((F4, scales[0, r]), (SP2, scales[1, r]))[int(scheme[r])]
        levels = torch.as_tensor(fmt.levels()).double() * float(s)
        for v in torch.cat([lo[r], hi[r]]):
            assert float((levels - v).abs().min()) < 1e-9


def test_rectified_sigmoid_and_schedule() -> None:
    v = torch.tensor([-100.0, 0.0, 100.0])
    assert rectified_sigmoid(v).tolist() == [0.0, 0.5, 1.0]
    rest = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(rectified_sigmoid(init_logits(rest)), rest, rtol=1e-5, atol=1e-5)
    cfg = AdaRoundConfig(iterations=100, warmup=0.2)
    assert beta_at(0, cfg) is None and beta_at(19, cfg) is None
    assert beta_at(20, cfg) == pytest.approx(20.0) and beta_at(99, cfg) == pytest.approx(2.225)
    with pytest.raises(MixqError, match="iterations"):
        AdaRoundConfig(iterations=0)


def test_adaround_lowers_the_reconstruction_error() -> None:
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 64, generator=g) * 0.2)
    q = QLinear(lin, LayerPlan(weight=FixedPoint(3, narrow=True), weight_granularity="channel"))
    x = torch.randn(2048, 64, generator=g) + 0.5
    y = lin(x).detach()
    xc, yc = x.t().unsqueeze(0), y.t().unsqueeze(0)
    rep = adaround_layer(q, xc, yc, AdaRoundConfig(iterations=1000, batch=256))
    assert rep["rec_adaround"] < 0.9 * rep["rec_nearest"]
    # the written weights are on the grid: the layer's fake quantizer reproduces them exactly
    torch.testing.assert_close(q.quantized_weight(), q.weight, rtol=0, atol=1e-7)
    # and each weight moved to a neighbour of its float value (up or down, never further)
    step = q.w_scales[0]
    assert bool(((q.weight - lin.weight).abs() <= step * (1 + 1e-5)).all())
    err_q = float((q(x) - y).pow(2).sum(1).mean().detach())
    assert err_q == pytest.approx(rep["rec_adaround"], rel=1e-3)


def test_optimize_rounding_is_deterministic() -> None:
    g = torch.Generator().manual_seed(2)
    lo = torch.floor(torch.randn(1, 4, 8, generator=g) * 3)
    gap = torch.ones_like(lo)
    rest = torch.rand(1, 4, 8, generator=g)
    x = torch.randn(1, 8, 300, generator=g)
    y = torch.bmm(lo + rest, x)
    cfg = AdaRoundConfig(iterations=50, batch=64)
    a, ra = optimize_rounding(lo, gap, rest, x, y, cfg)
    b, rb = optimize_rounding(lo, gap, rest, x, y, cfg)
    assert torch.equal(a, b) and ra == rb


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def test_adaround_model_improves_every_layer_and_output() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    plan = QuantPlan(model="net", layers={
        "c1": LayerPlan(weight=F4, act=FixedPoint(8)),
        "c2": LayerPlan(weight=F4, weight_alt=SP2, alt_rows=(0, 3, 5), act=FixedPoint(8, signed=False)),
        "c3": LayerPlan(weight=F4, act=FixedPoint(8, signed=False)),
        "fc": LayerPlan(weight=F4, act=FixedPoint(8, signed=False)),
    })
    q = to_quantized(net, plan)
    calibrate(q, [x])
    with torch.no_grad():
        ref = net(x)
        before = float((q(x) - ref).pow(2).mean())
    rep = adaround(q, net, x, AdaRoundConfig(iterations=150, batch=128, columns=2048))
    assert list(rep) == ["c1", "c2", "c3", "fc"]
    assert all(r["rec_adaround"] <= r["rec_nearest"] * 1.01 for r in rep.values())
    with torch.no_grad():
        after = float((q(x) - ref).pow(2).mean())
    assert after < before
    for m in q.modules():
        if isinstance(m, QConv2d | QLinear):
            torch.testing.assert_close(m.quantized_weight(), m.weight, rtol=0, atol=1e-6)
    # layers wider than max_bits are skipped
    q2 = to_quantized(net, plan)
    calibrate(q2, [x])
    assert adaround(q2, net, x, AdaRoundConfig(iterations=5, max_bits=3)) == {}


def test_streamed_and_per_layer_collection_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    stream_mod = importlib.import_module("mixq.algorithms.ptq._stream")

    torch.manual_seed(1)
    net = Net().eval()
    x = torch.randn(16, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    plan = QuantPlan(model="net", layers={n: LayerPlan(weight=F4, act=FixedPoint(8)) for n in ("c1", "c2", "c3", "fc")})
    cfg = AdaRoundConfig(iterations=30, batch=64, columns=512, batch_size=4)
    results = []
    for streamed in (True, False):
        if not streamed:
            monkeypatch.setattr(stream_mod, "stream_twins", lambda *a, **k: False)
        q = to_quantized(net, plan)
        calibrate(q, [x])
        rep = adaround(q, net, x, cfg)
        results.append((rep, {n: p.detach().clone() for n, p in q.named_parameters()}))
    (ra, wa), (rb, wb) = results
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=0, atol=1e-6)
    assert ra.keys() == rb.keys()


def test_stream_layers_sees_the_inputs_a_forward_sees() -> None:
    from mixq.algorithms.ptq._common import inputs_at
    from mixq.algorithms.ptq._stream import stream_layers

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.a(x))
            y = y + self.b(y)
            return self.fc(y.mean((2, 3)))  # type: ignore[no-any-return]

    net = Res().eval()
    xs = [torch.randn(2, 3, 6, 6), torch.randn(3, 3, 6, 6)]
    seen: dict[str, list[torch.Tensor]] = {}
    assert stream_layers(net, xs, ["b", "fc"], lambda n, m, inp: seen.__setitem__(n, inp))
    for n in ("b", "fc"):
        for xb, got in zip(xs, seen[n], strict=True):
            torch.testing.assert_close(got, inputs_at(net, net.get_submodule(n), xb))

    class Dynamic(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if float(x.sum()) > 0 else -x

    assert not stream_layers(Dynamic(), xs, [], lambda *a: None)
