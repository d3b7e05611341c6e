"""Output-aware per-row weight scales (mixq.algorithms.ptq.scales)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mixq.algorithms.ptq import quantize_report
from mixq.algorithms.ptq.scales import input_feature_moments, output_error, search_row_scales
from mixq.errors import MixqError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph.convert import to_quantized
from mixq.plan import LayerPlan, QuantPlan
from mixq.quant import snap, sqnr_db
from mixq.quant.observers import compute_scale

pytestmark = pytest.mark.usefixtures("one_thread")
F4 = FixedPoint(4, narrow=True)


def _layer_and_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Heavy-tailed weight rows and post-ReLU-like inputs whose features differ in mean and spread."""
    g = torch.Generator().manual_seed(seed)
    w = torch.distributions.StudentT(3.0).sample((24, 64)) * 0.1
    scale = torch.exp(torch.randn(64, generator=g))
    x = (torch.randn(4096, 64, generator=g) * scale + 1.5 * scale).clamp(min=0)
    return w, x


def _true_output_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    return float((((q - w) @ x.t()) ** 2).mean(dim=1).sum())


@pytest.mark.parametrize("fmt", [F4, SumOfPowers(4)])
def test_searched_scales_beat_minmax_and_mse_on_the_real_output_error(fmt: object) -> None:
    torch.manual_seed(0)
    w, x = _layer_and_inputs()
    mean, var = x.double().mean(0)[None], x.double().var(0, unbiased=False)[None]
    s = search_row_scales(w[None], fmt, mean, var)  # type: ignore[arg-type]
    errs = {"output": _true_output_error(w, snap(w, fmt, s[:, None].float()), x)}  # type: ignore[arg-type]
    for obs in ("minmax", "mse"):
        sc = compute_scale(w, fmt, "channel", obs)  # type: ignore[arg-type]
        errs[obs] = _true_output_error(w, snap(w, fmt, sc), x)  # type: ignore[arg-type]
    assert errs["output"] < 0.9 * min(errs["minmax"], errs["mse"]), errs


def test_output_error_is_the_expected_squared_output_error() -> None:
    w, x = _layer_and_inputs(1)
    q = snap(w, F4, compute_scale(w, F4, "channel", "minmax"))
    mean, var = x.double().mean(0)[None], x.double().var(0, unbiased=False)[None]
    approx = float(output_error((q - w).double()[None], mean, var, True).sum())
    exact = _true_output_error(w.double(), q.double(), x.double())
    # cross-covariances are dropped; these features are independent, so the two agree closely
    assert approx == pytest.approx(exact, rel=0.05)
    assert float(output_error((q - w).double()[None], mean, var, False).sum()) < approx


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(torch.relu(self.c1(x))))
        return self.fc(y.mean(dim=(2, 3)))


def _plan(observer: str) -> QuantPlan:
    return QuantPlan(model="net", layers={
        n: LayerPlan(weight=F4, weight_observer=observer, act=FixedPoint(8, signed=n == "c1"))
        for n in ("c1", "dw", "fc")})


def test_moments_match_unfolded_inputs_and_recipe_improves_the_model() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.c1.weight.mul_(torch.exp(torch.randn(16, 1, 1, 1)))
    x = torch.randn(64, 3, 8, 8)
    q = to_quantized(net, _plan("mse"))
    mom = input_feature_moments(q, ["c1", "dw", "fc"], x, 16)
    assert mom["c1"][0].shape == (1, 27) and mom["dw"][0].shape == (16, 9) and mom["fc"][0].shape == (1, 16)
    feats = x.mean(dim=(0, 2, 3))  # the centre tap of c1 sees every pixel: mean per input channel
    torch.testing.assert_close(mom["c1"][0][0, 4::9].float(), feats, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        ref = net(x)
    base = quantize_report(net, _plan("mse"), x, "minmax", weight_scales="plan").model
    res = quantize_report(net, _plan("mse"), x, "minmax", weight_scales="output")
    assert set(res.details["weight_scales"]) == {"c1", "dw", "fc"}
    assert all(v["error_after"] <= v["error_before"] for v in res.details["weight_scales"].values())
    with torch.no_grad():
        assert float(sqnr_db(ref, res.model(x))) > float(sqnr_db(ref, base(x)))
    with pytest.raises(MixqError, match="weight_scales"):
        quantize_report(net, _plan("mse"), x, "minmax", weight_scales="hessian")


def test_auto_scales_search_only_the_layers_below_8_bits() -> None:
    """The minmax recipe's default (``weight_scales="auto"``): 4-bit layers get the output-aware
    scales ``output`` would give them, 8-bit layers keep the plan's."""
    torch.manual_seed(1)
    net = Net().eval()
    x = torch.randn(32, 3, 8, 8)
    plan = _plan("mse")
    plan = plan.with_layer("c1", plan["c1"].with_(weight=FixedPoint(8, narrow=True)))
    auto = quantize_report(net, plan, x, "minmax")
    assert auto.recipe.weight_scales == "auto" and set(auto.details["weight_scales"]) == {"dw", "fc"}
    out = quantize_report(net, plan, x, "minmax", weight_scales="output").model
    own = quantize_report(net, plan, x, "minmax", weight_scales="plan").model
    for n in ("dw", "fc"):
        torch.testing.assert_close(auto.model.get_submodule(n).w_scales, out.get_submodule(n).w_scales)
        assert not torch.equal(auto.model.get_submodule(n).w_scales, own.get_submodule(n).w_scales)
    torch.testing.assert_close(auto.model.c1.w_scales, own.c1.w_scales)
    eight = QuantPlan(model="net", layers={n: lp.with_(weight=FixedPoint(8, narrow=True)) for n, lp in plan.items()})
    assert quantize_report(net, eight, x, "minmax").details["weight_scales"] == {}


def test_msq_rows_rechosen_on_the_output_error_keep_the_count_and_the_plan_in_step() -> None:
    from mixq.algorithms.msq import assign_rows

    torch.manual_seed(1)
    net = Net().eval()
    x = torch.randn(64, 3, 8, 8)
    plan = QuantPlan(model="net", layers={
        n: LayerPlan(weight=F4, weight_alt=SumOfPowers(4), alt_ratio=0.5, weight_observer="mse",
                     act=FixedPoint(8, signed=n == "c1")) for n in ("c1", "fc")})
    plan = assign_rows(net, plan)
    res = quantize_report(net, plan, x, "minmax", weight_scales="output", msq_rows="output")
    for n in ("c1", "fc"):
        rows = res.plan[n].alt_rows
        assert rows is not None and len(rows) == len(plan[n].alt_rows or ())  # same ρ
        layer = res.model.get_submodule(n)
        assert torch.nonzero(layer.row_scheme == 1).flatten().tolist() == list(rows)  # model and plan agree
        rep = res.details["weight_scales"][n]
        assert rep["error_after"] <= rep["error_before"] and rep["alt_rows"] == list(rows)
    assert res.plan["c1"].alt_rows != plan["c1"].alt_rows or res.plan["fc"].alt_rows != plan["fc"].alt_rows
    with pytest.raises(MixqError, match="msq_rows"):
        quantize_report(net, plan, x, "minmax", weight_scales="plan", msq_rows="output")


def test_msq_rows_output_auto_is_no_worse_than_either_format_alone() -> None:
    from mixq.algorithms.msq import assign_rows

    torch.manual_seed(1)
    net = Net().eval()
    x = torch.randn(64, 3, 8, 8)

    def plan_of(weight: Any, alt: Any) -> QuantPlan:
        return QuantPlan(model="net", layers={
            n: LayerPlan(weight=weight, weight_alt=alt, alt_ratio=0.5 if alt is not None else 0.0,
                         weight_observer="mse", act=FixedPoint(8, signed=n == "c1")) for n in ("c1", "fc")})

    mixed = assign_rows(net, plan_of(F4, SumOfPowers(4)))
    res = quantize_report(net, mixed, x, "minmax", weight_scales="output", msq_rows="output_auto")
    alone = [quantize_report(net, plan_of(f, None), x, "minmax", weight_scales="output").details["weight_scales"]
             for f in (F4, SumOfPowers(4))]
    for n in ("c1", "fc"):
        rep, rows = res.details["weight_scales"][n], res.plan[n].alt_rows
        assert rows is not None and rep["alt_rows"] == list(rows)
        assert res.plan[n].alt_ratio == pytest.approx(len(rows) / rep["rows"])  # the plan says the real ρ
        assert rep["error_after"] <= min(a[n]["error_after"] for a in alone) * (1 + 1e-9)
    assert any(0 < len(res.plan[n].alt_rows or ()) < res.model.get_submodule(n).weight.shape[0]
               for n in ("c1", "fc"))  # genuinely mixed, and not at the plan's 0.5 everywhere
    assert any(len(res.plan[n].alt_rows or ()) != len(mixed[n].alt_rows or ()) for n in ("c1", "fc"))


def test_output_aware_activation_ranges_lower_the_layer_output_error() -> None:
    torch.manual_seed(2)
    net = Net().eval()
    # heavy-tailed inputs: min-max ranges are set by rare outliers, so a tighter clip pays
    x = torch.distributions.StudentT(2.0).sample((64, 3, 8, 8))
    plan = QuantPlan(model="net", layers={
        n: LayerPlan(weight=None, act=FixedPoint(4, signed=n == "c1")) for n in ("c1", "dw", "fc")})
    with torch.no_grad():
        ref = net(x)
    base = quantize_report(net, plan, x, "minmax")
    res = quantize_report(net, plan, x, "minmax", act_ranges="output")
    rep = res.details["act_ranges"]
    assert list(rep) == ["c1", "dw", "fc"]
    assert all(v["error_after"] <= v["error_before"] and 0.25 <= v["ratio"] <= 1.0 for v in rep.values())
    assert rep["c1"]["ratio"] < 1.0  # the outliers of the input are clipped
    assert float(res.model.c1.input_quant.scale) == pytest.approx(
        rep["c1"]["ratio"] * float(base.model.c1.input_quant.scale), rel=1e-6)
    with torch.no_grad():
        assert float(sqnr_db(ref, res.model(x))) > float(sqnr_db(ref, base.model(x)))
    with pytest.raises(MixqError, match="act_ranges"):
        quantize_report(net, plan, x, "minmax", act_ranges="kl")


@pytest.mark.parametrize("layer", [nn.Conv2d(8, 6, 1), nn.Conv2d(8, 8, 1, groups=4), nn.Conv2d(8, 6, 1, stride=2),
                                   nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                                   nn.Conv2d(8, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
                                   nn.Linear(8, 5)],
                         ids=["pointwise", "grouped-pointwise", "strided-1x1", "3x3", "depthwise", "odd", "linear"])
def test_column_moments_equal_the_moments_of_the_columns(layer: nn.Module) -> None:
    """The in-place tap sums equal the sums over the im2col columns (what the moments were built from)."""
    from mixq.algorithms.ptq._common import column_moments, columns

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 7, 6, generator=gen) if isinstance(layer, nn.Conv2d) else torch.randn(4, 3, 8, generator=gen)
    cols = columns(layer, x).double()
    s1, s2, k = column_moments(layer, x)
    assert k == cols.shape[2] and s1.shape == cols.shape[:2] and s1.dtype == torch.float64
    torch.testing.assert_close(s1, cols.sum(dim=2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, (cols * cols).sum(dim=2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, padding="same"),
                                  nn.Conv2d(4, 6, (3, 2), padding="same", dilation=2),
                                  nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", groups=2),
                                  nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode="circular", stride=2)],
                         ids=["same", "same-asymmetric", "reflect-grouped", "circular-strided"])
def test_columns_and_moments_follow_the_convs_own_padding(conv: nn.Conv2d) -> None:
    """Columns and their moments are those of the input the conv really sees (padded its way, then
    unfolded without padding): times the weights they give the conv's output; the output-aware
    scales accept such layers."""
    from mixq.algorithms.ptq._common import column_moments, columns

    x = torch.randn(2, 4, 7, 8, generator=torch.Generator().manual_seed(0))
    pads = tuple(conv._reversed_padding_repeated_twice)
    xp = torch.nn.functional.pad(x, pads, mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
    unf = torch.nn.functional.unfold(xp, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    y = conv(x)
    assert unf.shape[2] == y.shape[2] * y.shape[3]  # the unfolded positions are the conv's outputs
    b, k, l = unf.shape
    g = conv.groups
    cols = unf.reshape(b, g, k // g, l).permute(1, 2, 0, 3).reshape(g, k // g, b * l).double()
    assert torch.equal(columns(conv, x).double(), cols)
    out = torch.bmm(conv.weight.detach().reshape(g, -1, k // g), columns(conv, x))
    assert conv.bias is not None
    torch.testing.assert_close(out.reshape(conv.out_channels, b, -1).permute(1, 0, 2).reshape(y.shape),
                               (y - conv.bias[None, :, None, None]).detach(), rtol=1e-5, atol=1e-5)
    s1, s2, n = column_moments(conv, x)
    assert n == b * l
    torch.testing.assert_close(s1, cols.sum(dim=2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, (cols * cols).sum(dim=2), rtol=1e-12, atol=1e-12)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net(x)
    plan = QuantPlan(model="pad", layers={n: LayerPlan(weight=F4, weight_observer="mse", act=FixedPoint(8, signed=True))
                                          for n in ("0", "3")})
    res = quantize_report(net.eval(), plan, x, "minmax")
    assert set(res.details["weight_scales"]) == {"0", "3"}


def test_act_range_search_uses_the_convs_own_padding() -> None:
    """The output error the activation ranges are tuned on is the conv's map, reflect padding included."""
    from mixq.algorithms.ptq.act_ranges import _op

    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert conv.bias is not None
    torch.testing.assert_close(_op(conv, x), conv(x) - conv.bias.detach()[None, :, None, None])
