"""bias_fit: the weight steps of rows whose bias would pass the accumulator grow just enough (TFLite's rule)."""

from __future__ import annotations

import torch
from torch import nn

from mixq import api
from mixq.algorithms.ptq.bias_fit import fit_bias_steps
from mixq.engine import to_integer, verify
from mixq.nn import QConv2d


def _model() -> nn.Sequential:
    """A second layer whose input is ~1e-7 (a squeeze-excite pool of near-zero features at random init) and whose
    bias is ~1: its bias code at s_x * s_w passes 32 bits."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        m[0].weight.mul_(1e-7)
        m[0].bias.fill_(0.0)
        m[2].bias.uniform_(-1.0, 1.0)
    return m


def test_rows_whose_bias_would_overflow_get_coarser_steps() -> None:
    model, x = _model(), torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plan = api.default_plan("tiny", model, x)
    q = api.quantize(model, plan, x)
    conv = q.get_submodule("2")
    assert isinstance(conv, QConv2d)
    step = conv.row_scale().reshape(-1).double() * 2.0 ** -conv.formats[0].frac_bits
    codes = conv.bias.detach().abs().double() / (float(conv.input_quant.scale) * step)  # type: ignore[union-attr]
    assert float(codes.max()) <= 2.0**30 * (1 + 1e-9)
    rep = verify(q, x[:4])  # before the stage: "accumulator needs 4x bits ... the budget is 32 bits"
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    assert fit_bias_steps(q) == {}  # idempotent: nothing left to fit


def test_stage_undone_the_engine_refuses_and_other_rows_are_untouched() -> None:
    model, x = _model(), torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    q = api.quantize(model, api.default_plan("tiny", model, x), x)
    conv, head = q.get_submodule("2"), q.get_submodule("6")
    before = head.w_scales.clone()  # type: ignore[union-attr]
    conv.refresh_weight_scales()  # type: ignore[operator] - the scales from the weights alone
    try:
        to_integer(q, x[:2])
    except Exception as exc:  # noqa: BLE001
        assert "the budget is 32 bits" in str(exc)
    else:
        raise AssertionError("the unfitted bias should not fit 32 bits")
    changed = fit_bias_steps(q)
    assert set(changed) == {"2"} and changed["2"]["rows"] == 8 and changed["2"]["factor"] > 2**8
    assert torch.equal(head.w_scales, before)  # type: ignore[union-attr]
