"""Executed MACs and channel counts of FBS on inverted residual blocks (expansion -> depthwise -> projection):
a suppressed expansion channel skips its depthwise channel and folds into the projection's per-image bias."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq.algorithms.prune import apply_masks, channel_masks
from mixq.algorithms.prune.fbs import (
    FbsConfig,
    channel_counts,
    executed_macs,
    fold_fbs_bn,
    input_activity,
    static_prior,
    to_fbs,
)
from mixq.graph.capture import capture
from mixq.hw.dynamic import dynamic_overlay, gated_spec
from mixq.nn.fbs import fbs_layers
from mixq.plan import QuantPlan

SHAPE = (3, 8, 8)
C, HID, OUT = 4, 8, 6  # block input, hidden (expanded), output channels
EXPAND, DW, PROJ = "block.0", "block.3", "block.6"


def _block() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("stem", nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU6()))
    m.add_module("block", nn.Sequential(
        nn.Conv2d(C, HID, 1, bias=False), nn.BatchNorm2d(HID), nn.ReLU6(),
        nn.Conv2d(HID, HID, 3, padding=1, groups=HID, bias=False), nn.BatchNorm2d(HID), nn.ReLU6(),
        nn.Conv2d(HID, OUT, 1, bias=False), nn.BatchNorm2d(OUT)))
    m.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(OUT, 5)))
    with torch.no_grad():  # BN statistics away from the identity, so the suppressed channels' constants are nonzero
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                assert bn.running_mean is not None and bn.running_var is not None
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(0.5, 1.0)  # positive: ReLU6 keeps the constant of a zero input nonzero
    return m.eval()


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    return _block()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(1)) + 1.0


def _fbs(dense: nn.Module, density: float) -> nn.Module:
    return fold_fbs_bn(to_fbs(dense, FbsConfig(density=density, layers=(EXPAND,)), SHAPE))


def test_depthwise_macs_of_a_dense_model_equal_the_specs(dense: nn.Module, x: torch.Tensor) -> None:
    specs = {s.name: s for s in capture(dense, SHAPE)}
    assert specs[DW].kind == "dwconv" and specs[DW].groups == HID
    macs = executed_macs(dense, list(specs.values()), x)
    for name in (EXPAND, DW, PROJ, "stem.0"):  # every channel active (inputs > 0 after ReLU6 + BN bias)
        assert macs[name].tolist() == [specs[name].macs] * x.shape[0], name
    assert specs[DW].macs == HID * 3 * 3 * 8 * 8
    counts = channel_counts(dense, x, [EXPAND, DW, PROJ])
    assert counts[DW].tolist() == [[HID, HID]] * x.shape[0]


def test_suppressed_expansion_channels_skip_depthwise_and_fold_into_projection(dense: nn.Module,
                                                                               x: torch.Tensor) -> None:
    specs = capture(dense, SHAPE)
    by = {s.name: s for s in specs}
    full = executed_macs(_fbs(dense, 1.0), specs, x)
    fbs = _fbs(dense, 0.5)
    k = fbs_layers(fbs)[EXPAND].k
    assert k == HID // 2
    macs = executed_macs(fbs, specs, x)
    counts = channel_counts(fbs, x, [EXPAND, DW, PROJ])
    n = x.shape[0]
    px = 8 * 8
    # hand-computed: the expansion computes k of HID outputs over all C inputs; the depthwise conv computes only
    # the k channels whose input is nonzero (3x3 each); the projection reads k active channels and folds the
    # HID - k constant ones (its per-image bias: (HID - k) x OUT MACs once per image, not per pixel)
    assert macs[EXPAND].tolist() == [C * k * px] * n
    assert macs[DW].tolist() == [k * 9 * px] * n
    assert macs[PROJ].tolist() == [k * OUT * px + (HID - k) * OUT] * n
    assert (full[DW] - macs[DW]).tolist() == [(HID - k) * 9 * px] * n
    assert (full[PROJ] - macs[PROJ]).tolist() == [(HID - k) * OUT * (px - 1)] * n
    assert counts[EXPAND].tolist() == [[C, k]] * n
    assert counts[DW].tolist() == [[k, k]] * n
    assert counts[PROJ].tolist() == [[k, OUT]] * n
    assert macs["stem.0"].tolist() == [by["stem.0"].macs] * n


def test_constant_channels_are_only_folded_where_exact() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1] = 2.0  # constant, nonzero
    x[0, 2, 0, 0] = 1.0  # varying
    act, const = input_activity(x, fold_constant=True)
    assert act.tolist() == [[False, False, True]] and const.tolist() == [[False, True, False]]
    act, const = input_activity(x, fold_constant=False)  # a zero-padded conv: a constant channel is computed
    assert act.tolist() == [[False, True, True]] and not const.any()
    act, const = input_activity(torch.ones(1, 2, 1, 1), fold_constant=True)  # one pixel: nothing to fold
    assert act.all() and not const.any()


def test_static_and_fbs_with_the_same_kept_channels_count_equal_macs(dense: nn.Module, x: torch.Tensor) -> None:
    specs = capture(dense, SHAPE)
    masks = channel_masks(dense, 0.5, [EXPAND])
    static = apply_masks(dense, masks)
    fbs = to_fbs(dense, FbsConfig(density=0.5, layers=(EXPAND,)), SHAPE)
    fold_fbs_bn(static_prior(fbs, masks, margin=0.5))  # the winner-take-all keeps exactly the static channels
    m_static, m_fbs = executed_macs(static, specs, x), executed_macs(fbs, specs, x)
    for name in (EXPAND, DW, PROJ, "total"):
        assert torch.equal(m_static[name], m_fbs[name]), name
    layers = [EXPAND, DW, PROJ]
    assert {k: v.tolist() for k, v in channel_counts(static, x, layers).items()} == \
        {k: v.tolist() for k, v in channel_counts(fbs, x, layers).items()}


def test_overlay_prices_depthwise_counts_by_group(dense: nn.Module, x: torch.Tensor) -> None:
    specs = capture(dense, SHAPE)
    by = {s.name: s for s in specs}
    g = gated_spec(by[DW], 4, 4)
    assert (g.groups, g.in_channels, g.out_channels, g.row_length, g.macs) == (4, 4, 4, 9, by[DW].macs // 2)
    fbs = _fbs(dense, 0.5)
    counts = {n: [(int(a), int(b)) for a, b in c.tolist()]
              for n, c in channel_counts(fbs, x, [EXPAND, DW, PROJ]).items()}
    plan = QuantPlan("t", {})
    dense_est = dynamic_overlay(specs, plan, {n: [(s.in_channels, s.out_channels)] * x.shape[0]
                                              for n, s in by.items() if n in counts}, predictors=False).summary()
    est = dynamic_overlay(specs, plan, counts, with_predictor=[EXPAND])
    summ = est.summary()
    assert summ["cycles_mean"] < dense_est["cycles_mean"]
    assert f"{EXPAND}.predictor" in summ["layers"] and f"{DW}.predictor" not in summ["layers"]
    assert summ["layers"][DW]["cycles_mean"] < summ["layers"][DW]["dense_cycles"]
