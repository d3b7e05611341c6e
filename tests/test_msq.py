"""MSQ row assignment: ranking by SP2's error advantage, ratios per layer and global, plans."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq.algorithms.msq import MSQConfig, assign_rows, choose_rows, msq_plan, row_advantage
from mixq.errors import MixqError, PlanError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.plan import LayerPlan, QuantPlan, load_plan, save_plan
from mixq.quant import per_row_error

F4 = FixedPoint(4, narrow=True)
SP2 = SumOfPowers(4)


pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_rows(rows: int = 16, n: int = 288, seed: int = 0) -> tuple[torch.Tensor, set[int]]:
    """Rows alternating Gaussian with a few 8σ outliers (SP2's dense levels near zero fit the bulk
    under the outliers' range) and uniform (fixed point fits). At 4 bits SP2 wins only on such
    outlier-dominated rows; on plain Gaussian or Laplacian rows fixed point's error is lower."""
    g = torch.Generator().manual_seed(seed)
    out, heavy = [], set()
    for r in range(rows):
        if r % 2 == 0:
            v = torch.randn(n, generator=g)
            v[:3] *= 8
            heavy.add(r)
        else:
            v = torch.rand(n, generator=g) * 2 - 1
        out.append(v * (0.1 + r / rows))
    return torch.stack(out), heavy


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.c2(torch.relu(self.c1(x)))))
        return self.fc(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def test_row_advantage_prefers_sp2_for_heavy_tailed_rows() -> None:
    torch.manual_seed(0)
    w, heavy = mixed_rows()
    adv = row_advantage(w, F4, SP2)
    chosen = choose_rows(adv, len(heavy))
    assert set(chosen) == heavy
    assert choose_rows(adv, 0) == () and len(choose_rows(adv, 99)) == w.shape[0]
    assert choose_rows(torch.zeros(4), 2) == (0, 1)  # ties: lower index first


def test_mixed_rows_beat_both_pure_schemes_at_the_right_ratio() -> None:
    torch.manual_seed(1)
    w, heavy = mixed_rows()
    # min-max scales (the range set by the largest weight, as in Mix and Match): with MSE-searched
    # scales fixed point clips the outliers instead and wins most rows of these sizes
    rows = choose_rows(row_advantage(w, F4, SP2, "minmax"), len(heavy))
    power = w.double().pow(2).mean(dim=1)  # relative errors: every row counts alike
    e_fix = per_row_error(w, F4, "minmax").mse / power
    e_sp2 = per_row_error(w, SP2, "minmax").mse / power
    mixed = torch.where(torch.tensor([r in rows for r in range(w.shape[0])]), e_sp2, e_fix)
    assert float(mixed.sum()) < 0.97 * min(float(e_fix.sum()), float(e_sp2.sum()))


def _plan(net: nn.Module, ratio: float, names: tuple[str, ...] = ("c1", "c2", "fc")) -> QuantPlan:
    return QuantPlan(model="net", layers={
        n: LayerPlan(weight=F4, weight_alt=SP2, alt_ratio=ratio) for n in names})


def test_assign_rows_per_layer() -> None:
    torch.manual_seed(2)
    net = Net()
    plan = assign_rows(net, _plan(net, 0.5))
    assert [len(plan[n].alt_rows or ()) for n in ("c1", "c2", "fc")] == [4, 8, 5]
    assert plan["c2"].alt_ratio == 0.5 and plan.meta["msq"]["scope"] == "layer"
    # one ratio per layer (e.g. from the hardware model) overrides the plan's
    plan2 = assign_rows(net, _plan(net, 0.5), {"c2": 0.25})
    assert len(plan2["c2"].alt_rows or ()) == 4 and len(plan2["c1"].alt_rows or ()) == 4
    # ρ = 0 and 1
    assert assign_rows(net, _plan(net, 0.0))["fc"].alt_rows == ()
    assert assign_rows(net, _plan(net, 1.0))["fc"].alt_rows == tuple(range(10))
    with pytest.raises(PlanError, match="alt_ratio"):
        assign_rows(net, _plan(net, 0.5), 1.5)
    with pytest.raises(PlanError, match="nope"):
        assign_rows(net, QuantPlan(model="net", layers={"nope": LayerPlan(weight=F4, weight_alt=SP2)}))
    with pytest.raises(MixqError, match="scope"):
        assign_rows(net, _plan(net, 0.5), scope="everywhere")


def test_assign_rows_ranks_folded_weights() -> None:
    torch.manual_seed(3)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_var.copy_(torch.linspace(0.01, 100.0, 16))
        net.bn.weight.copy_(torch.linspace(-2.0, 3.0, 16))
    from mixq.graph import fold_bn

    folded = fold_bn(net).c2.weight
    expect = choose_rows(row_advantage(folded, F4, SP2), 8)
    assert assign_rows(net, _plan(net, 0.5, ("c2",)))["c2"].alt_rows == expect


def test_assign_rows_global_budget() -> None:
    torch.manual_seed(4)
    net = Net()
    plan = assign_rows(net, _plan(net, 0.5), 0.5, scope="global")
    n_alt = sum(len(plan[n].alt_rows or ()) for n in ("c1", "c2", "fc"))
    assert n_alt == round(0.5 * (8 + 16 + 10))
    assert all(plan[n].alt_ratio == len(plan[n].alt_rows or ()) / r for n, r in (("c1", 8), ("c2", 16), ("fc", 10)))
    # weighted by MACs per row: the budget is a fraction of the work
    macs = {"c1": 27 * 64, "c2": 72 * 64, "fc": 16}
    plan_m = assign_rows(net, _plan(net, 0.5), 0.3, scope="global", macs_per_row=macs)
    spent = sum(len(plan_m[n].alt_rows or ()) * macs[n] for n in macs)
    total = sum(macs[n] * r for n, r in (("c1", 8), ("c2", 16), ("fc", 10)))
    assert abs(spent / total - 0.3) <= max(macs.values()) / total / 2 + 1e-9
    assert plan_m.meta["msq"]["achieved"] == pytest.approx(spent / total)
    with pytest.raises(MixqError, match="one ratio"):
        assign_rows(net, _plan(net, 0.5), {"c1": 0.5}, scope="global")


def test_msq_plan_first_last_policy_and_json_round_trip(tmp_path: object) -> None:
    torch.manual_seed(5)
    net = Net()
    sample = torch.randn(2, 3, 8, 8)
    plan = msq_plan("net", net, sample, MSQConfig(ratio=0.5))
    assert plan["c1"].weight == FixedPoint(8, narrow=True) and plan["c1"].weight_alt is None
    assert plan["fc"].weight_alt is None and plan["c2"].weight_alt == SP2
    assert len(plan["c2"].alt_rows or ()) == 8
    assert plan["c1"].act is not None and plan["c1"].act.signed and not plan["c2"].act.signed  # type: ignore[union-attr]
    all_mixed = msq_plan("net", net, sample, MSQConfig(first_last=None), ratio=0.25)
    assert len(all_mixed["c1"].alt_rows or ()) == 2 and len(all_mixed["fc"].alt_rows or ()) == 2
    from pathlib import Path

    path = Path(str(tmp_path)) / "plan.json"
    save_plan(plan, path)
    assert load_plan(path)["c2"].alt_rows == plan["c2"].alt_rows
    with pytest.raises(MixqError, match="ratio"):
        MSQConfig(ratio=2.0)


def test_recipe_assigns_unassigned_rows_and_layers_use_them() -> None:
    from mixq.algorithms.ptq import quantize_report
    from mixq.nn import QConv2d

    torch.manual_seed(6)
    net = Net().eval()
    x = torch.randn(8, 3, 8, 8)
    res = quantize_report(net, _plan(net, 0.5, ("c2",)), x, "minmax")
    rows = res.plan["c2"].alt_rows
    assert rows is not None and len(rows) == 8
    layer = res.model.c2
    assert isinstance(layer, QConv2d)
    assert [i for i, f in enumerate(layer.row_formats()) if f == SP2] == list(rows)


def test_auto_ratio_gives_sp2_exactly_the_rows_it_fits_better() -> None:
    torch.manual_seed(3)
    w, heavy = mixed_rows()
    net = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        net.weight.copy_(w)
    plan = QuantPlan(model="lin", layers={"": LayerPlan(weight=F4, weight_alt=SP2, weight_observer="minmax")})
    got = assign_rows(net, plan, "auto")[""]
    e_fix = per_row_error(w, F4, "minmax").mse
    e_sp2 = per_row_error(w, SP2, "minmax").mse
    assert set(got.alt_rows or ()) == {r for r in range(w.shape[0]) if e_sp2[r] < e_fix[r]}
    assert got.alt_rows and set(got.alt_rows) <= heavy  # here: outlier rows only
    assert got.alt_ratio == pytest.approx(len(got.alt_rows) / w.shape[0])
    # per row the better format, so the layer error is at most either single-format plan's
    mixed = torch.where(torch.tensor([r in (got.alt_rows or ()) for r in range(w.shape[0])]), e_sp2, e_fix)
    assert float(mixed.sum()) <= min(float(e_fix.sum()), float(e_sp2.sum()))
    with pytest.raises(MixqError, match="auto"):
        assign_rows(net, plan, "most")
