"""PTQ toolbox on small models: CLE, bias absorption, bias correction, BN re-estimation, data-free
synthesis and the recipes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mixq.algorithms.ptq import (
    RECIPES,
    ChannelStats,
    ClippedReLU,
    Recipe,
    absorb_high_bias,
    analytic_bias_correction,
    bn_output_stats,
    clipped_normal_moments,
    cross_layer_equalize,
    empirical_bias_correction,
    expected_input_means,
    find_pairs,
    get_recipe,
    quantize,
    quantize_report,
    reestimate_bn,
    restore_channel_stats,
    synthesize_inputs,
)
from mixq.algorithms.ptq._common import input_channel_ranges
from mixq.algorithms.ptq.cle import column_ranges, row_ranges
from mixq.algorithms.ptq.datafree import DataFreeConfig
from mixq.algorithms.ptq.recipes import AUTO_ACT_WEIGHT, pair_act_weights
from mixq.errors import MixqError
from mixq.formats import FixedPoint, parse_format
from mixq.graph import fold_bn
from mixq.graph.convert import calibrate, to_quantized
from mixq.nn import QConv2d, QLinear
from mixq.plan import LayerPlan, QuantPlan
from mixq.plan.plan import GRANULARITIES

SHAPE = (3, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    """conv-BN-ReLU6 → depthwise-BN-ReLU6 → 1x1 project-BN, plus a residual when shapes match."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class Tiny(nn.Module):
    """A MobileNetV2-like model small enough for unit tests."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8, 24)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.block(self.stem(x))))  # type: ignore[no-any-return]


def make_model(seed: int = 0) -> nn.Module:
    """A Tiny model with uneven channel ranges and BN statistics that match its data."""
    g = torch.Generator().manual_seed(seed)
    m = Tiny()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                w = torch.randn(mod.weight.shape, generator=g) * 0.3
                rows = w.shape[0]
                w *= torch.exp(torch.randn(rows, generator=g)).reshape(-1, *([1] * (w.dim() - 1)))
                mod.weight.copy_(w)
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.exp(torch.randn(mod.num_features, generator=g) * 0.7))
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.5 + 0.3)
    reestimate_bn(m, data(256, seed + 1))
    return m.eval()


def data(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def plan_for(model: nn.Module, weight: str = "fixed8n", granularity: str = "channel",
             act: str | None = "ufixed8", observer: str = "minmax") -> QuantPlan:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    signed = {"stem.0", "head.0"}  # inputs: the image, a residual sum
    layers = {}
    for n in names:
        a = None if act is None else parse_format(act)
        if a is not None and n in signed:
            a = FixedPoint(a.storage_bits, signed=True)
        layers[n] = LayerPlan(weight=parse_format(weight), weight_granularity=granularity, act=a,
                              weight_observer=observer)
    return QuantPlan(model="tiny", layers=layers)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_model()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return data(64, seed=2)


# ---------------------------------------------------------------------------------------------- CLE
def test_find_pairs(model: nn.Module) -> None:
    pairs = {(p.first, p.second): p for p in find_pairs(fold_bn(model), SHAPE)}
    assert ("block.conv.0", "block.conv.3") in pairs and ("block.conv.3", "block.conv.6") in pairs
    dw = pairs[("block.conv.0", "block.conv.3")]
    assert dw.padded and dw.act_kind == "relu6"
    assert pairs[("head.0", "fc.1")].spatial == 64  # through maxpool and flatten
    assert ("fc.1", "fc.3") in pairs
    # stem.0 feeds the residual add as well: not equalizable; the project conv feeds an add
    assert not any(p.first in ("stem.0", "block.conv.6") for p in pairs.values())


class _SamePadded(nn.Module):
    """expand -> ReLU6 -> explicit pad -> depthwise (padding 0) -> ReLU6 -> project: TF-style "same" padding
    as imported ONNX graphs carry it (EfficientNet-Lite0)."""

    def __init__(self, pad: nn.Module | None) -> None:
        super().__init__()
        self.expand, self.act1 = nn.Conv2d(3, 8, 1), nn.ReLU6()
        self.pad = pad
        self.dw, self.act2 = nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6()
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.expand(x))
        h = self.pad(h) if self.pad is not None else torch.nn.functional.pad(h, (1, 1, 1, 1))
        return self.project(self.act2(self.dw(h)))


@pytest.mark.parametrize(("pad", "paired"), [(nn.ZeroPad2d(1), True), (nn.ConstantPad2d(1, 0.0), True),
                                             (nn.ConstantPad2d(1, 0.5), False), (None, False)],
                         ids=["zero-pad", "constant-0", "constant-0.5", "functional"])
def test_a_zero_pad_module_between_the_layers_keeps_the_pair(pad: nn.Module | None, paired: bool) -> None:
    torch.manual_seed(0)
    net = _SamePadded(pad).eval()
    with torch.no_grad():  # channel ranges 100x apart: equalizing moves them
        g = torch.logspace(0, -2, 8)
        net.expand.weight.mul_(g[:, None, None, None])
        net.expand.bias.mul_(g)
    shape = (3, 10, 10)
    pairs = {(q.first, q.second): q for q in find_pairs(net, shape)}
    assert (("expand", "dw") in pairs) == paired
    if not paired:
        return
    assert pairs[("expand", "dw")].padded  # the pad's zeros count as the second layer's padding
    eq, _, done = cross_layer_equalize(net, shape, iterations=50)
    assert any(q.first == "expand" for q in done)
    x = torch.randn(16, *shape)
    with torch.no_grad():
        torch.testing.assert_close(eq(x), net(x), rtol=1e-3, atol=1e-3)
        assert not torch.equal(eq.expand.weight, net.expand.weight)


@pytest.mark.parametrize("relu6", ["clip", "keep"])
def test_cle_keeps_the_float_function(model: nn.Module, x: torch.Tensor, relu6: str) -> None:
    fm = fold_bn(model)
    eq, _, pairs = cross_layer_equalize(fm, SHAPE, relu6=relu6, iterations=50)
    with torch.no_grad():  # float32 reassociation: measured up to 2e-4 on one element in 640 under load
        torch.testing.assert_close(eq(x), fm(x), rtol=1e-3, atol=1e-3)
    assert len(pairs) == (4 if relu6 == "clip" else 2)
    assert any(isinstance(m, ClippedReLU) for m in eq.modules()) == (relu6 == "clip")
    # the input is unchanged
    assert all(not isinstance(m, ClippedReLU) for m in fm.modules())


def test_cle_equalizes_ranges(model: nn.Module) -> None:
    eq, _, pairs = cross_layer_equalize(fold_bn(model), SHAPE, iterations=100, tol=1e-7)
    for p in pairs:
        l1, l2 = eq.get_submodule(p.first), eq.get_submodule(p.second)
        g = l2.groups if isinstance(l2, nn.Conv2d) else 1
        r1, r2 = row_ranges(l1.weight), column_ranges(l2.weight, g, p.spatial)
        torch.testing.assert_close(r1, r2, rtol=1e-3, atol=1e-6)


def test_activation_aware_cle_balances_activation_with_the_second_layer(model: nn.Module,
                                                                        x: torch.Tensor) -> None:
    fm = fold_bn(model)
    pairs = find_pairs(fm, SHAPE)
    ranges = input_channel_ranges(fm, [p.second for p in pairs], x, 16)
    eq, _, pairs = cross_layer_equalize(fm, SHAPE, iterations=100, tol=1e-7, pairs=pairs, act_ranges=ranges,
                                        act_weight=1.0)
    with torch.no_grad():
        torch.testing.assert_close(eq(x), fm(x), rtol=1e-3, atol=1e-3)
    after = input_channel_ranges(eq, [p.second for p in pairs], x, 16)
    for p in pairs:  # act_weight = 1: activation channel range == second layer's column range
        l2 = eq.get_submodule(p.second)
        g = l2.groups if isinstance(l2, nn.Conv2d) else 1
        a = after[p.second].reshape(-1, p.spatial).amax(dim=1).float()
        live = a > 0  # channels the ReLU kills on this data keep DFQ's rule
        assert int(live.sum()) >= a.numel() // 2
        torch.testing.assert_close(a[live], column_ranges(l2.weight, g, p.spatial)[live], rtol=1e-3, atol=1e-6)
    # act_weight = 0 is DFQ's rule, whatever ranges are given
    dfq, _, _ = cross_layer_equalize(fm, SHAPE, pairs=find_pairs(fm, SHAPE))
    same, _, _ = cross_layer_equalize(fm, SHAPE, pairs=find_pairs(fm, SHAPE), act_ranges=ranges, act_weight=0.0)
    for (n, a), (_, b) in zip(dfq.state_dict().items(), same.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    with pytest.raises(MixqError, match="act_weight"):
        get_recipe("dfq", cle_act_weight=2.0)
    with pytest.raises(MixqError, match="cle_act_weight"):
        get_recipe("dfq", cle_act_weight="half")


def test_auto_act_weight_follows_first_layer_granularity(model: nn.Module, x: torch.Tensor) -> None:
    fm = fold_bn(model)
    pairs = find_pairs(fm, SHAPE)
    firsts = [p.first for p in pairs]
    r = get_recipe("dfq_empirical")
    assert r.cle_act_weight == "auto"
    tensor, channel = plan_for(model, granularity="tensor"), plan_for(model)
    assert pair_act_weights(r, tensor, firsts) == dict.fromkeys(firsts, AUTO_ACT_WEIGHT["tensor"])
    assert pair_act_weights(r, channel, firsts) == dict.fromkeys(firsts, AUTO_ACT_WEIGHT["channel"])
    assert AUTO_ACT_WEIGHT["tensor"] < AUTO_ACT_WEIGHT["channel"]
    assert set(AUTO_ACT_WEIGHT) == set(GRANULARITIES)  # every granularity a plan may name has its share
    assert pair_act_weights(get_recipe("dfq", cle_act_weight=0.3), tensor, firsts) == 0.3
    # a per-pair mapping is the same as the scalar when every pair gets the same weight
    ranges = input_channel_ranges(fm, [p.second for p in pairs], x, 16)
    one, _, _ = cross_layer_equalize(fm, SHAPE, pairs=pairs, act_ranges=ranges, act_weight=0.25)
    per, _, _ = cross_layer_equalize(fm, SHAPE, pairs=pairs, act_ranges=ranges,
                                     act_weight=dict.fromkeys(firsts, 0.25))
    for (n, a), (_, b) in zip(one.state_dict().items(), per.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    # the recipe applies them: per-tensor and per-channel plans equalize differently
    qt = quantize(model, tensor, x, "dfq_empirical", bias_correction="none")
    qc = quantize(model, channel, x, "dfq_empirical", bias_correction="none")
    fixed = quantize(model, tensor, x, "dfq_empirical", bias_correction="none", cle_act_weight=0.5)
    w = {k: m.get_submodule(firsts[0]).weight for k, m in (("t", qt), ("c", qc), ("fixed", fixed))}
    assert torch.equal(w["c"], w["fixed"])  # the float weights after CLE: 0.5 either way
    assert not torch.allclose(w["t"], w["c"])


def test_cle_relu_mode_matches_relu_model(model: nn.Module, x: torch.Tensor) -> None:
    fm = fold_bn(model)
    eq, _, _ = cross_layer_equalize(fm, SHAPE, relu6="relu")
    ref = copy.deepcopy(fm)
    ref.block.conv[2] = nn.ReLU()
    ref.block.conv[5] = nn.ReLU()
    with torch.no_grad():
        torch.testing.assert_close(eq(x), ref(x), rtol=1e-3, atol=1e-3)


def test_cle_rescales_stats(model: nn.Module) -> None:
    stats = bn_output_stats(model)
    assert set(stats) >= {"stem.0", "block.conv.0", "block.conv.3", "head.0"}
    eq, new, pairs = cross_layer_equalize(fold_bn(model), SHAPE, stats=stats)
    first = pairs[0].first
    with torch.no_grad():
        ratio = row_ranges(eq.get_submodule(first).weight) / row_ranges(fold_bn(model).get_submodule(first).weight)
    torch.testing.assert_close(new[first].std, stats[first].std * ratio, rtol=1e-4, atol=1e-6)


def test_absorption_exact_when_preactivations_stay_above_c(model: nn.Module, x: torch.Tensor) -> None:
    fm = fold_bn(model)
    eq, _, pairs = cross_layer_equalize(fm, SHAPE)
    # c = the smallest pre-activation each channel takes on x (std 0): relu(z - c) + c == relu(z) exactly
    lows: dict[str, torch.Tensor] = {}
    hooks = [eq.get_submodule(p.first).register_forward_hook(
        lambda _m, _i, y, n=p.first: lows.__setitem__(n, y.transpose(0, 1).reshape(y.shape[1], -1).amin(1)))
        for p in pairs]
    with torch.no_grad():
        eq(x)
    for h in hooks:
        h.remove()
    stats = {n: ChannelStats(v, torch.zeros_like(v)) for n, v in lows.items()}
    ab, new, absorbed = absorb_high_bias(eq, pairs, stats)
    assert absorbed and all(not p.padded for p in pairs if p.first in absorbed)
    assert "block.conv.0" not in absorbed  # its consumer (depthwise 3x3) zero-pads
    with torch.no_grad():
        torch.testing.assert_close(ab(x), fm(x), rtol=1e-3, atol=1e-3)
    n = next(iter(absorbed))
    torch.testing.assert_close(new[n].mean, stats[n].mean - absorbed[n])


# ---------------------------------------------------------------------------------------------- bias correction
def _mean_layer_errors(q: nn.Module, fm: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer: mean over data of (quantized layer - float weights) on the same quantized input."""
    out: dict[str, torch.Tensor] = {}
    hooks = []
    for n, m in q.named_modules():
        if isinstance(m, QConv2d | QLinear):
            ref = fm.get_submodule(n)

            def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], y: torch.Tensor, ref: nn.Module = ref,
                     n: str = n) -> None:
                xq = mod.input_quant(inp[0]) if mod.input_quant is not None else inp[0]
                yf = ref(xq)
                d = y - yf
                out[n] = d.mean(dim=(0, 2, 3)) if d.dim() == 4 else d.mean(dim=0)
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    return out


def test_empirical_bias_correction_removes_mean_output_error(model: nn.Module, x: torch.Tensor) -> None:
    fm = fold_bn(model)
    q = to_quantized(fm, plan_for(fm, "fixed4n", "tensor"))
    calibrate(q, [x])
    before = _mean_layer_errors(q, fm, x)
    empirical_bias_correction(q, x, fm)
    after = _mean_layer_errors(q, fm, x)
    # the first layer sees the same input before and after: its mean error is gone; later layers'
    # inputs moved with the corrected layers before them (one pass measures all layers) ...
    assert float(after["stem.0"].abs().max()) < 1e-5
    assert float(after["block.conv.0"].abs().max()) < 1e-2 * float(before["block.conv.0"].abs().max())
    assert all(float(after[n].abs().mean()) < float(before[n].abs().mean()) for n in before)
    # ... which more passes take into account
    empirical_bias_correction(q, x, fm, passes=4)
    after = _mean_layer_errors(q, fm, x)
    for n in before:
        assert float(after[n].abs().mean()) < 1e-5 + 2e-2 * float(before[n].abs().mean()), n
    assert max(float(v.abs().max()) for v in before.values()) > 1e-2


def test_network_bias_correction_matches_float_means(model: nn.Module, x: torch.Tensor) -> None:
    fm = fold_bn(model)
    q = to_quantized(fm, plan_for(fm, "fixed3n", "tensor", act="ufixed4"))
    calibrate(q, [x])
    empirical_bias_correction(q, x, fm, mode="network")
    outs: dict[str, list[torch.Tensor]] = {"q": [], "f": []}
    for key, mdl in (("q", q), ("f", fm)):
        h = mdl.get_submodule("fc.3").register_forward_hook(lambda _m, _i, y, key=key: outs[key].append(y))
        with torch.no_grad():
            mdl(x)
        h.remove()
    torch.testing.assert_close(outs["q"][0].mean(0), outs["f"][0].mean(0), rtol=1e-3, atol=1e-3)
    with pytest.raises(MixqError, match="network"):
        empirical_bias_correction(q, x, None, mode="network")


def test_clipped_normal_moments_match_sampling() -> None:
    g = torch.Generator().manual_seed(0)
    mu, sd = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 2.0, 0.5])
    z = torch.randn(400_000, 3, generator=g, dtype=torch.float64) * sd.double() + mu.double()
    for upper in (None, torch.tensor([6.0, 1.0, 2.5])):
        ref = z.clamp(min=0) if upper is None else torch.minimum(z.clamp(min=0), upper.double())
        got = clipped_normal_moments(mu, sd, upper)
        torch.testing.assert_close(got.mean.double(), ref.mean(0), rtol=0, atol=0.01)
        torch.testing.assert_close(got.std.double(), ref.std(0), rtol=0, atol=0.01)


def test_analytic_bias_correction_reduces_mean_error(model: nn.Module, x: torch.Tensor) -> None:
    fm = fold_bn(model)
    stats = bn_output_stats(model)
    means = expected_input_means(fm, SHAPE, stats)
    assert {"block.conv.0", "block.conv.3", "head.0"} <= set(means)
    assert "fc.1" not in means  # after a max-pool: not derivable
    q = to_quantized(fm, plan_for(fm, "fixed3n", "tensor", act=None))
    before = _mean_layer_errors(q, fm, x)
    done = analytic_bias_correction(q, means, fm)
    after = _mean_layer_errors(q, fm, x)
    tot_b = sum(float(before[n].abs().mean()) for n in done)
    tot_a = sum(float(after[n].abs().mean()) for n in done)
    assert tot_a < 0.5 * tot_b


# ---------------------------------------------------------------------------------------------- BN
def test_reestimate_bn_recovers_data_statistics() -> None:
    m = make_model(3)
    bn = m.stem[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    xs = data(96, 4)
    with torch.no_grad():
        y = m.stem[0](xs)
    reestimate_bn(m, xs, batch_size=32)
    torch.testing.assert_close(bn.running_mean, y.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, y.var((0, 2, 3)), rtol=2e-2, atol=1e-4)
    assert not m.training and not bn.training and bn.momentum == 0.1
    m2 = nn.Sequential(nn.Conv2d(3, 3, 1))
    with pytest.raises(MixqError, match="BatchNorm"):
        reestimate_bn(m2, data(4))


def test_restore_channel_stats_matches_float_mean_and_std(model: nn.Module, x: torch.Tensor) -> None:
    fm = fold_bn(model)
    q = to_quantized(fm, plan_for(fm, "fixed3n", "channel", act="ufixed4"))
    calibrate(q, [x])
    layer = q.get_submodule("head.0")
    codes = layer.formats[0].quantize(layer.weight, layer.w_scales[0])
    restore_channel_stats(q, fm, x, max_gain=10.0)
    ys: dict[str, torch.Tensor] = {}
    for key, mdl in (("q", q), ("f", fm)):
        h = mdl.get_submodule("head.0").register_forward_hook(lambda _m, _i, y, key=key: ys.__setitem__(key, y))
        with torch.no_grad():
            mdl(x)
        h.remove()
    torch.testing.assert_close(ys["q"].mean((0, 2, 3)), ys["f"].mean((0, 2, 3)), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ys["q"].std((0, 2, 3)), ys["f"].std((0, 2, 3)), rtol=2e-2, atol=1e-3)
    # the gains scale weights and scales together: the integer codes stay the same
    assert torch.equal(layer.formats[0].quantize(layer.weight, layer.w_scales[0]), codes)


# ---------------------------------------------------------------------------------------------- data free
def test_synthesized_inputs_match_bn_statistics(model: nn.Module) -> None:
    xs, rep = synthesize_inputs(model, SHAPE, DataFreeConfig(images=8, batch=8, iterations=60, lr=0.1))
    assert xs.shape == (8, *SHAPE)
    assert rep["loss_end"] < 0.5 * rep["loss_start"]
    with pytest.raises(MixqError, match="BatchNorm"):
        synthesize_inputs(fold_bn(model), SHAPE, DataFreeConfig(images=2, iterations=1))


# ---------------------------------------------------------------------------------------------- recipes
def test_minmax_recipe_matches_api_quantize(model: nn.Module, x: torch.Tensor) -> None:
    from mixq.api import quantize as api_quantize

    plan = plan_for(model)
    a = quantize(model, plan, x, "minmax")
    b = api_quantize(model, plan, x)
    with torch.no_grad():  # batch sizes differ: float sums (and so observed maxima) may differ in the last bit
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_runs_and_stays_close(model: nn.Module, x: torch.Tensor, name: str) -> None:
    fast = {"adaround": {"adaround": get_recipe("adaround").adaround.__class__(iterations=20, columns=256)},
            "datafree": {"datafree": DataFreeConfig(images=8, batch=8, iterations=20)}}.get(name, {})
    res = quantize_report(model, plan_for(model), x, name, **fast)
    with torch.no_grad():
        ref, out = fold_bn(model)(x), res.model(x)
    err = float((out - ref).pow(2).mean() / ref.pow(2).mean())
    assert err < 0.05, (name, err)
    assert res.recipe.name == name and res.seconds > 0 and "calibrate" in res.timings
    assert not res.model.training


def test_recipe_overrides_and_errors(model: nn.Module, x: torch.Tensor) -> None:
    r = get_recipe("dfq", relu6="relu", absorb_bias=True)
    assert r.cle and r.relu6 == "relu" and r.absorb_bias and not RECIPES["dfq"].absorb_bias
    assert get_recipe(Recipe(name="mine")).name == "mine"
    with pytest.raises(MixqError, match="recipe"):
        get_recipe("nope")
    with pytest.raises(MixqError, match="bias_correction"):
        Recipe(bias_correction="magic")
    with pytest.raises(MixqError, match="recipe"):
        get_recipe("dfq", no_such_field=1)
    with pytest.raises(MixqError, match="calibration data"):
        quantize(model, plan_for(model), None, "minmax", input_shape=SHAPE)
    with pytest.raises(MixqError, match="bias_passes"):
        Recipe(bias_passes=0)


def test_recipe_with_absorption_runs(model: nn.Module, x: torch.Tensor) -> None:
    res = quantize_report(model, plan_for(model), x, "dfq", absorb_bias=True)
    assert res.details["absorbed_layers"] >= 1 and res.details["cle_pairs"] == 4


def test_quantize_does_not_change_the_model(model: nn.Module, x: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize(model, plan_for(model), x, "dfq")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
