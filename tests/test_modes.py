"""eval_mode / train_mode: each model's mode comes back on exit, exception or not; call sites keep it too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq import api
from mixq.algorithms.ptq.bias_correction import empirical_bias_correction
from mixq.engine import to_integer
from mixq.engine.verify import verify
from mixq.errors import MixqError, ModelError
from mixq.formats import parse_format
from mixq.graph.convert import calibrate, to_quantized
from mixq.modes import eval_mode, train_mode


def _bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def _modes(m: nn.Module) -> list[bool]:
    return [s.training for s in m.modules()]


def test_eval_mode_sets_and_restores() -> None:
    net = _bn_net()
    with eval_mode(net):
        assert _modes(net) == [False] * 4
    assert _modes(net) == [True] * 4


def test_train_mode_sets_and_restores() -> None:
    net = _bn_net().eval()
    with train_mode(net):
        assert _modes(net) == [True] * 4
    assert _modes(net) == [False] * 4


def test_restored_after_an_exception() -> None:
    net = _bn_net()  # BatchNorm in train mode
    with pytest.raises(RuntimeError, match="half-way"), eval_mode(net):
        assert not net[1].training
        raise RuntimeError("half-way")
    assert net.training and net[1].training
    net.eval()
    with pytest.raises(ValueError), train_mode(net):
        raise ValueError
    assert not net.training and not net[1].training


def test_restored_after_a_failing_forward() -> None:
    net = _bn_net()
    with pytest.raises(RuntimeError), eval_mode(net):
        net(torch.randn(1, 5, 8, 8))  # wrong channel count: the conv raises
    assert net[1].training


def test_nested() -> None:
    net = _bn_net()
    with eval_mode(net):
        with train_mode(net):
            assert net[1].training
            with eval_mode(net):
                assert not net[1].training
            assert net[1].training
        assert not net[1].training
    assert net[1].training


def test_several_models() -> None:
    a, b, c = _bn_net(), _bn_net().eval(), _bn_net()
    with pytest.raises(KeyError), eval_mode(a, b, c):
        assert not any(m.training for m in (a, b, c))
        raise KeyError
    assert (a.training, b.training, c.training) == (True, False, True)
    with train_mode(a, b, c):
        assert all(m.training for m in (a, b, c))
    assert (a.training, b.training, c.training) == (True, False, True)


def test_same_model_twice_gets_its_first_mode_back() -> None:
    net = _bn_net()
    with eval_mode(net, net):
        assert not net.training
    assert net.training


def test_module_wide_by_default() -> None:
    net = _bn_net()
    net[1].eval()  # a frozen BatchNorm inside a training model
    with eval_mode(net):
        pass
    assert _modes(net) == [True] * 4  # model.train(was): the BatchNorm takes the model's mode


def test_per_module_restores_each_flag() -> None:
    net = _bn_net()
    net[1].eval()
    before = _modes(net)
    with pytest.raises(RuntimeError), eval_mode(net, per_module=True):
        assert _modes(net) == [False] * 4
        raise RuntimeError
    assert _modes(net) == before == [True, True, False, True]
    with train_mode(net, per_module=True):
        assert _modes(net) == [True] * 4
    assert _modes(net) == before


def test_no_models_is_a_no_op() -> None:
    with eval_mode():
        pass


# a real call site that lacked a finally: verify() left the caller's model in eval mode when it raised

X = torch.randn(8, 3, 8, 8)


def _quantized() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    plan = api.default_plan("m", m, X, weight=parse_format("fixed8n"), act=parse_format("ufixed8"))
    return api.quantize(m, plan, X, fold=False)


@pytest.mark.parametrize("given_imodel", [True, False])
def test_verify_keeps_the_callers_mode_when_it_raises(given_imodel: bool) -> None:
    q = _quantized()
    im = to_integer(q, X) if given_imodel else None
    q.train()
    wrong = torch.randn(2, 3, 9, 9)  # the Linear after the flatten no longer fits
    with pytest.raises((ModelError, RuntimeError)):
        verify(q, wrong, imodel=im)
    assert q.training and all(m.training for m in q.modules())
    q.eval()
    with pytest.raises((ModelError, RuntimeError)):
        verify(q, wrong, imodel=im)
    assert not any(m.training for m in q.modules())


def test_verify_keeps_the_callers_mode_when_it_passes() -> None:
    q = _quantized().train()
    assert verify(q, X)["exact"]
    assert q.training


def test_calibrate_keeps_the_callers_mode_when_it_raises() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    q = to_quantized(m, api.default_plan("m", m.eval(), X)).train()
    with pytest.raises(ModelError, match="at least one batch"):
        calibrate(q, [])
    assert q.training


def test_bias_correction_keeps_the_callers_mode_when_it_raises() -> None:
    q = _quantized().train()
    with pytest.raises(MixqError, match="not one of"):
        empirical_bias_correction(q, X, mode="nonsense")
    assert q.training
