"""GPTQ for any row grid: the column-by-column update, MSQ row choice on the exact output error,
the asymmetric (float-target) fit, and the recipe."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from mixq.algorithms.ptq import GPTQConfig, get_recipe, gptq, gptq_layer, gptq_quantize, quantize_report
from mixq.algorithms.ptq.gptq import InputStats, row_errors, row_quantizer, target_weights
from mixq.errors import MixqError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph.convert import calibrate, to_quantized
from mixq.nn import QConv2d, QLinear
from mixq.plan import LayerPlan, QuantPlan
from mixq.quant import snap
from test_ptq_adaround import Net

F4 = FixedPoint(4, narrow=True)
SP2 = SumOfPowers(4)

pytestmark = pytest.mark.usefixtures("one_thread")


def _correlated(n: int, k: int, seed: int) -> torch.Tensor:
    """``n`` inputs of ``k`` strongly correlated features (like neighbouring pixels), mean shifted."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, k, generator=g)
    mix = torch.eye(k) + 0.8 * torch.randn(k, k, generator=g) / math.sqrt(k)
    return (base @ mix + 0.3).double()


def _on_grid(q: torch.Tensor, fmts: list, scales: torch.Tensor) -> bool:
    for r in range(q.shape[0]):
        levels = torch.as_tensor(fmts[r].levels()).double() * float(scales[r])
        if float((q[r][:, None] - levels[None, :]).abs().min(dim=1).values.max()) > 1e-9:
            return False
    return True


@pytest.mark.parametrize("fmt", [F4, SP2], ids=["fixed", "sp2"])
def test_gptq_beats_nearest_and_stays_on_the_grid(fmt: object) -> None:
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(12, 48, generator=g) * 0.1).double()[None]
    x = _correlated(4096, 48, 1)
    h = (x.t() @ x)[None]
    s = w.abs().amax(dim=2) / (7 if fmt is F4 else 1)
    quant = row_quantizer((fmt,), torch.zeros(1, 12, dtype=torch.long), s[None])  # type: ignore[arg-type]
    nearest = snap(w, fmt, s[..., None])  # type: ignore[arg-type]
    q = gptq_quantize(w, h, quant)
    e_near, e_gptq = float(row_errors(nearest - w, h).sum()), float(row_errors(q - w, h).sum())
    assert e_gptq < 0.8 * e_near
    assert _on_grid(q[0], [fmt] * 12, s[0])
    # with an identity Hessian (uncorrelated unit inputs) GPTQ is round-to-nearest
    eye = torch.eye(48, dtype=torch.float64)[None]
    torch.testing.assert_close(gptq_quantize(w, eye, quant), nearest, rtol=0, atol=1e-12)


def test_dead_inputs_get_zero_weight_and_blocks_do_not_matter() -> None:
    g = torch.Generator().manual_seed(2)
    w = (torch.randn(2, 4, 20, generator=g) * 0.1).double()
    x = _correlated(500, 20, 3)
    x[:, 5] = 0.0  # an input that never fires
    h = torch.stack([x.t() @ x, x.t() @ x])
    s = w.abs().amax(dim=2) / 7
    quant = row_quantizer((F4,), torch.zeros(2, 4, dtype=torch.long), s[None])
    q = gptq_quantize(w, h, quant, block=128)
    assert bool((q[:, :, 5] == 0).all())
    for block in (1, 3, 7):
        torch.testing.assert_close(gptq_quantize(w, h, quant, block=block), q, rtol=0, atol=1e-12)


def test_rows_never_interact_so_stacked_rows_match_separate_runs() -> None:
    # gptq_layer fits every candidate (targets, scales, formats) in one stacked call: each row of the
    # stack must come out exactly as it would alone, whatever its format and scale
    g = torch.Generator().manual_seed(4)
    w = (torch.randn(1, 6, 30, generator=g) * 0.1).double()
    x = _correlated(800, 30, 5)
    h = (x.t() @ x)[None]
    scheme = torch.tensor([[0, 1, 0, 1, 1, 0]])
    scales = torch.stack([w.abs().amax(dim=2) / 7, w.abs().amax(dim=2) * 0.8])
    stacked = gptq_quantize(w, h, row_quantizer((F4, SP2), scheme, scales), block=8)
    for r in range(6):
        k = int(scheme[0, r])
        alone = gptq_quantize(w[:, r : r + 1], h, row_quantizer(((F4, SP2)[k],), torch.zeros(1, 1, dtype=torch.long),
                                                                 scales[k, :, r : r + 1][None]), block=8)
        torch.testing.assert_close(stacked[:, r : r + 1], alone, rtol=0, atol=1e-12)
    assert not torch.equal(stacked[0, 1], gptq_quantize(w, h, row_quantizer((F4,), torch.zeros_like(scheme),
                                                                            scales[:1]))[0, 1])


def _linear(rows: int, k: int, plan: LayerPlan, seed: int) -> tuple[QLinear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, rows, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(rows, k, generator=g) * 0.1 + torch.randn(rows, 1, generator=g) * 0.02)
    return QLinear(lin, plan), _correlated(8192, k, seed + 1)


def test_msq_rows_auto_is_no_worse_than_either_format_alone() -> None:
    base = LayerPlan(weight=F4, weight_alt=SP2, alt_rows=tuple(range(0, 24, 2)), weight_granularity="channel")
    layer, x = _linear(24, 32, base, 4)
    stats = InputStats((x.t() @ x)[None])
    errors = {}
    for name, rows in (("fixed", ()), ("sp2", tuple(range(24)))):
        only, _ = _linear(24, 32, base.with_(alt_rows=rows), 4)
        errors[name] = gptq_layer(only, stats, GPTQConfig())["error_gptq"]
    rep = gptq_layer(layer, stats, GPTQConfig(), rows="auto")
    assert rep["error_gptq"] <= min(errors.values()) * (1 + 1e-9)
    assert 0 < len(rep["alt_rows"]) < 24  # a genuine mix here
    assert rep["alt_rows"] == torch.nonzero(layer.row_scheme == 1).flatten().tolist()
    # the written weights are each row's own levels: the fake quantizer reproduces them
    torch.testing.assert_close(layer.quantized_weight(), layer.weight, rtol=0, atol=1e-6)
    # "count" keeps the number of SP2 rows; "plan" keeps the rows themselves
    counted, _ = _linear(24, 32, base, 4)
    assert len(gptq_layer(counted, stats, GPTQConfig(), rows="count")["alt_rows"]) == 12
    kept, _ = _linear(24, 32, base, 4)
    gptq_layer(kept, stats, GPTQConfig(), rows="plan")
    assert torch.nonzero(kept.row_scheme == 1).flatten().tolist() == list(range(0, 24, 2))
    with pytest.raises(MixqError, match="rows"):
        gptq_layer(kept, stats, GPTQConfig(), rows="best")


def test_held_out_choice_uses_both_halves_for_the_final_fit() -> None:
    base = LayerPlan(weight=F4, weight_alt=SP2, alt_rows=(0,), weight_granularity="channel")
    layer, x = _linear(16, 24, base, 6)
    a, b = x[::2], x[1::2]
    halves = (InputStats((a.t() @ a)[None]), InputStats((b.t() @ b)[None]))
    rep = gptq_layer(layer, halves, GPTQConfig(), rows="auto")
    # the reported error is on all the data, and GPTQ on all the data with the chosen rows gives it
    again, _ = _linear(16, 24, base.with_(alt_rows=tuple(rep["alt_rows"])), 6)
    assert gptq_layer(again, halves[0] + halves[1], GPTQConfig())["error_gptq"] == pytest.approx(rep["error_gptq"])


@pytest.mark.parametrize("holdout", [False, True], ids=["one_fit", "held_out"])
def test_continuous_weights_round_to_gptqs_levels_and_keep_the_compensation(holdout: bool) -> None:
    base = LayerPlan(weight=F4, weight_alt=SP2, alt_rows=tuple(range(0, 16, 3)), weight_granularity="channel")
    x = _correlated(8192, 24, 9)
    stats = (InputStats((x[::2].t() @ x[::2])[None]), InputStats((x[1::2].t() @ x[1::2])[None]))
    given = stats if holdout else stats[0] + stats[1]
    rounded, _ = _linear(16, 24, base, 8)
    cont, _ = _linear(16, 24, base, 8)
    w0 = cont.weight.detach().clone()
    a = gptq_layer(rounded, given, GPTQConfig(), rows="auto")
    b = gptq_layer(cont, given, GPTQConfig(continuous=True), rows="auto")
    assert a == b and torch.equal(rounded.w_scales, cont.w_scales)
    with torch.no_grad():  # the layer's own quantizer rounds the handed-over weights to GPTQ's levels exactly
        assert torch.equal(cont.quantized_weight(), rounded.quantized_weight())
    # what is handed over is off the grid (compensated), not the float weights, except on nearest rows
    moved = (cont.weight - w0).abs().amax(dim=1) > 0
    assert int(moved.sum()) == 16 - a["rows_nearest"] and not torch.equal(cont.weight, rounded.weight)


def test_asymmetric_target_fits_the_float_output() -> None:
    g = torch.Generator().manual_seed(7)
    w = (torch.randn(1, 6, 16, generator=g) * 0.2).double()
    xf = _correlated(3000, 16, 8)
    xq = 0.8 * xf.clamp(max=1.5)  # the quantized model's input: scaled and clipped by the layers before
    h = (xq.t() @ xq)[None]
    same = InputStats(h, h.clone())
    torch.testing.assert_close(target_weights(w, same, 0.01), w, rtol=0, atol=1e-12)
    ws = target_weights(w, InputStats(h, (xf.t() @ xq)[None]), 0.0)
    target = xf @ w[0].t()

    def err(v: torch.Tensor) -> float:
        return float((xq @ v[0].t() - target).pow(2).sum())

    # W* is the least-squares fit of the float output on the quantized input ...
    w_ls = torch.linalg.lstsq(xq, target).solution.t()[None]
    torch.testing.assert_close(ws, w_ls, rtol=1e-6, atol=1e-9)
    assert err(ws) < 0.5 * err(w)  # ... and undoes much of what the earlier layers did to the input


def _plan(alt: tuple[int, ...] | None = (0, 3, 5, 9)) -> QuantPlan:
    u8 = FixedPoint(8, signed=False)
    msq = {"weight_alt": SP2, "alt_rows": alt, "alt_ratio": 0.25} if alt is not None else {}
    return QuantPlan(model="net", layers={
        "c1": LayerPlan(weight=F4, act=FixedPoint(8)),
        "c2": LayerPlan(weight=F4, act=u8),
        "c3": LayerPlan(weight=F4, act=u8, **msq),  # type: ignore[arg-type]
        "fc": LayerPlan(weight=F4, act=u8),
    })


def test_gptq_model_streamed_and_per_layer_agree_and_beat_nearest(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = net(x)
    results = []
    for streamed in (True, False):
        if not streamed:
            monkeypatch.setattr(importlib.import_module("mixq.algorithms.ptq._stream"), "stream_twins",
                                lambda *a, **k: False)
        q = to_quantized(net, _plan())
        calibrate(q, [x])
        with torch.no_grad():
            before = float((q(x) - ref).pow(2).mean())
        rep = gptq(q, x, GPTQConfig(batch_size=8), rows="auto", fmodel=net)
        with torch.no_grad():
            after = float((q(x) - ref).pow(2).mean())
        results.append((rep, {n: p.detach().clone() for n, p in q.named_parameters()}))
        assert list(rep) == ["c1", "c2", "c3", "fc"]
        assert all(r["error_gptq"] <= r["error_nearest"] * (1 + 1e-6) for r in rep.values())
        assert after < 0.8 * before
        for m in q.modules():
            if isinstance(m, QConv2d | QLinear):
                torch.testing.assert_close(m.quantized_weight(), m.weight, rtol=0, atol=1e-6)
    (ra, wa), (rb, wb) = results
    assert ra.keys() == rb.keys() and ra["c3"]["alt_rows"] == rb["c3"]["alt_rows"]
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=0, atol=1e-6)


def test_gptq_recipe_writes_the_chosen_rows_into_the_plan() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    res = quantize_report(net, _plan(), x, "gptq", msq_rows="output_auto", batch_size=8)
    layer = res.model.get_submodule("c3")
    chosen = tuple(torch.nonzero(layer.row_scheme == 1).flatten().tolist())
    assert res.plan["c3"].alt_rows == chosen == tuple(res.details["gptq"]["c3"]["alt_rows"])
    assert res.plan["c3"].alt_ratio == pytest.approx(len(chosen) / 16)
    assert "gptq" in res.timings
    minmax = quantize_report(net, _plan(), x, "minmax", batch_size=8).model
    with torch.no_grad():
        ref = net(x)
        assert float((res.model(x) - ref).pow(2).mean()) < float((minmax(x) - ref).pow(2).mean())


def test_gptq_settings_are_validated() -> None:
    with pytest.raises(MixqError, match="gptq.images"):
        GPTQConfig(images=0)
    with pytest.raises(MixqError, match="gptq.damp"):
        GPTQConfig(damp=1.5)
    with pytest.raises(MixqError, match="one rounding method"):
        get_recipe("gptq", adaround=get_recipe("adaround").adaround)
    with pytest.raises(MixqError, match="0 calibration"):
        gptq(to_quantized(Net(), _plan(None)), torch.zeros(0, 3, 12, 12))


@pytest.mark.parametrize("conv", [nn.Conv2d(8, 6, 1), nn.Conv2d(8, 8, 1, groups=4), nn.Conv2d(8, 6, 1, stride=2),
                                  nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 8, 3, groups=8)],
                         ids=["pointwise", "grouped-pointwise", "strided-1x1", "3x3", "depthwise"])
def test_columns_are_the_unfolded_input_with_the_pointwise_shortcut(conv: nn.Conv2d) -> None:
    from mixq.algorithms.ptq._common import columns

    x = torch.randn(3, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    cols = columns(conv, x)
    unf = torch.nn.functional.unfold(x, conv.kernel_size, padding=conv.padding,  # type: ignore[arg-type]
                                     stride=conv.stride)
    b, k, l = unf.shape
    g = conv.groups
    assert torch.equal(cols, unf.reshape(b, g, k // g, l).permute(1, 2, 0, 3).reshape(g, k // g, b * l))
    # each column times the grouped weight is the conv's output at that position
    y = torch.bmm(conv.weight.detach().reshape(g, -1, k // g), cols)
    assert conv.bias is not None
    ref = (conv(x) - conv.bias.detach()[None, :, None, None]).detach()
    torch.testing.assert_close(y.reshape(conv.out_channels, b, -1).permute(1, 0, 2).reshape(ref.shape), ref,
                               rtol=1e-5, atol=1e-5)
