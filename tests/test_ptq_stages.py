"""PTQ as stages: one loop, one verb, and a new algorithm as one file + one registry line + one test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq import api
from mixq.algorithms.ptq import RECIPES, get_recipe, quantize, quantize_report
from mixq.algorithms.ptq import pipeline as pl
from mixq.algorithms.ptq.pipeline import EXTRA_STAGES, PIPELINE, PTQState, Stage, stages_of
from mixq.errors import MixqError
from mixq.formats import FixedPoint
from mixq.graph.convert import act_quantizers
from mixq.plan import uniform_plan


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def _data(n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=g)
    x[0, 0, 0, 0] = 40.0  # one outlier: min-max ranges stretch to it, a percentile does not
    return x


def _plan(w: int = 4, a: int = 4):  # type: ignore[no-untyped-def]
    return uniform_plan("tiny", ["0", "3", "6"], FixedPoint(w), FixedPoint(a, signed=False), signed_inputs=["0"])


def _state(q: nn.Module) -> dict[str, torch.Tensor]:
    return q.state_dict()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_quantize_report_is_the_loop_over_the_recipes_stages(name: str) -> None:
    recipe = RECIPES[name]
    names = [s.name for s in stages_of(recipe, _plan())]
    order = [s.name for s in PIPELINE]
    assert names[0] == ("synthesize" if recipe.datafree else "fold_bn")
    core = [n for n in names if n in order]
    assert core == sorted(core, key=order.index)  # the one order
    assert "calibrate" in names and "swap" in names
    assert ("cle" in names) == recipe.cle and ("gptq" in names) == (recipe.gptq is not None)
    for n in recipe.stages:
        assert names.index(n) == names.index(EXTRA_STAGES[n].before) - 1


def test_timings_name_the_stages_that_ran() -> None:
    res = quantize_report(_net(), _plan(), _data(), "dfq_empirical")
    assert list(res.timings) == [s.name for s in stages_of(get_recipe("dfq_empirical"), _plan())]


def test_one_verb_api_quantize_is_the_plan_recipe() -> None:
    net, plan, x = _net(), _plan(8, 8), _data()
    a = api.quantize(net, plan, x)  # the plan as written (default recipe "plan")
    b = quantize(net, plan, x, "plan")
    c = quantize_report(net, plan, x, "plan").model
    assert _same(a, b) and _same(b, c)
    d = api.quantize(net, plan, torch.utils.data.TensorDataset(x), recipe="minmax")  # any data, any recipe
    assert _same(d, quantize(net, plan, x, "minmax"))


def test_percentile_stage_clips_the_outlier_and_keeps_other_observers() -> None:
    net, plan, x = _net(), _plan(), _data(400)  # 25,600 input values: the one outlier is above the 99.99th
    plain = quantize_report(net, plan, x, "minmax")
    pct = quantize_report(net, plan, x, "minmax_pct")
    assert pct.details["act_percentile"] == {"quantizers": 3}
    s_plain = [float(a.scale) for a in act_quantizers(plain.model)]
    s_pct = [float(a.scale) for a in act_quantizers(pct.model)]
    assert s_pct[0] < 0.5 * s_plain[0]  # the network input held the outlier: its range shrinks
    assert all(p <= m * (1 + 1e-6) for p, m in zip(s_pct, s_plain, strict=True))
    # a quantizer whose plan names another observer keeps it
    mse = plan.with_layer("3", plan["3"].with_(act_observer="mse"))
    res = quantize_report(net, mse, x, "minmax", stages=("act_percentile",))
    assert res.details["act_percentile"] == {"quantizers": 2}
    assert [a.observer_kind for a in act_quantizers(res.model)] == ["percentile", "mse", "percentile"]


def test_an_unknown_stage_is_named() -> None:
    with pytest.raises(MixqError, match=r"recipe.stages: 'nope' not one of act_percentile"):
        get_recipe("minmax", stages=("nope",))


def test_a_new_stage_is_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def apply(s: PTQState) -> PTQState:  # runs after the swap, before calibration
        seen.append(type(s.quantized).__name__)
        s.details["probe"] = len(act_quantizers(s.quantized))
        return s

    monkeypatch.setitem(EXTRA_STAGES, "probe", Stage("probe", apply, before="calibrate"))
    res = quantize_report(_net(), _plan(), _data(), "minmax", stages=("probe",))
    assert seen and res.details["probe"] == 3
    assert list(res.timings).index("probe") == list(res.timings).index("calibrate") - 1
    assert pl.EXTRA_STAGES is EXTRA_STAGES


def test_the_cli_offers_every_recipe() -> None:
    from mixq.cli.quantize import RECIPES as CLI_RECIPES  # kept torch-free for --help; must not drift

    assert tuple(RECIPES) == CLI_RECIPES


@pytest.mark.parametrize("fold", [True, False])
def test_the_plan_recipe_is_the_old_plan_as_written(fold: bool) -> None:
    """api.quantize's default is what graph.ops.quantize did before the stages: normalize, fold BN,
    swap, calibrate in batches of 256 (written out here so a change to any stage shows)."""
    from mixq.graph import fold_bn
    from mixq.graph.convert import calibrate, to_quantized
    from mixq.graph.normalize import normalize

    net, plan, x = _net(), _plan(4, 4), _data(300)  # two calibration batches of the old default (256)
    m = normalize(net, tuple(x.shape[1:]))
    m = fold_bn(m) if fold else m
    old = to_quantized(m, plan, sample=x[:2])
    calibrate(old, (x[i : i + 256] for i in range(0, x.shape[0], 256)))
    new = api.quantize(net, plan, x, fold=fold)
    assert _same(old.eval(), new)
    # the comparison sees a recipe's change: minmax gives these 4-bit weights output-aware scales
    assert not _same(new, api.quantize(net, plan, x, fold=fold, recipe="minmax"))
