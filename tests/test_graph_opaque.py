"""Activation modules fx cannot trace (TorchScript functions inside) become the torch module that computes the same
(mixq.graph.opaque), so models written that way (geffnet's Jit / Me activations) get in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq import api
from mixq.engine import verify
from mixq.errors import ModelError
from mixq.graph.normalize import normalize
from mixq.graph.opaque import match, replace_opaque_activations


class _SwishFn(torch.autograd.Function):
    """Memory-efficient swish (saves only its input), as geffnet's SwishMe / efficientnet_pytorch's."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)  # type: ignore[attr-defined]
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        s = torch.sigmoid(x)
        return g * (s * (1 + x * (1 - s)))


class SwishMe(nn.Module):
    """fx traces through a custom autograd Function's forward: left as it is (a product)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwishFn.apply(x)  # type: ignore[no-any-return]


@torch.jit.script
def _swish_jit(x: torch.Tensor) -> torch.Tensor:
    return x.mul(x.sigmoid())


class SwishJit(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _swish_jit(x)  # type: ignore[no-any-return]


@torch.jit.script
def _hard_swish_jit(x: torch.Tensor) -> torch.Tensor:
    return x * (x + 3).clamp(min=0, max=6).div(6.0)


class HardSwishJit(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _hard_swish_jit(x)  # type: ignore[no-any-return]


@torch.jit.script
def _square_jit(x: torch.Tensor) -> torch.Tensor:
    return x * x


class SquareMe(nn.Module):
    """Opaque to fx and no known activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _square_jit(x)  # type: ignore[no-any-return]


def _net(act: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(), nn.Conv2d(8, 8, 3, padding=1),
                         HardSwishJit(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _data() -> torch.Tensor:
    return torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def test_probe_names_the_activation() -> None:
    assert match(SwishJit()) == "silu" == match(SwishMe()) and match(HardSwishJit()) == "hardswish"
    assert match(SquareMe()) is None and match(nn.Flatten()) is None


def test_opaque_activations_are_replaced_in_a_copy() -> None:
    model = _net(SwishJit)
    out, found = replace_opaque_activations(model)
    assert found == {"2": "silu", "4": "hardswish"}
    assert type(out.get_submodule("2")) is nn.SiLU and type(out.get_submodule("4")) is nn.Hardswish
    assert type(model.get_submodule("2")) is SwishJit  # the caller's model is unchanged
    assert "2" not in replace_opaque_activations(_net(SwishMe))[1]  # traceable: left to the tracer
    x = _data()
    with torch.no_grad():
        assert torch.allclose(normalize(model, (3, 12, 12))(x), model(x), rtol=1e-5, atol=1e-6)
    same, none = replace_opaque_activations(nn.Sequential(nn.Conv2d(3, 3, 1), nn.SiLU()))
    assert none == {} and type(same[1]) is nn.SiLU


def test_model_with_opaque_activations_quantizes_bit_exact() -> None:
    """Before: 'torch.fx cannot trace Sequential' at the first of them."""
    model, x = _net(SwishJit), _data()
    plan = api.default_plan("opaque", model, x)
    q = api.quantize(model, plan, x)
    rep = verify(q, x[:4])
    assert rep["exact"] and rep["mismatching_outputs"] == 0


def test_an_opaque_module_that_is_no_activation_is_refused_by_the_tracer() -> None:
    model, x = _net(SquareMe), _data()
    with pytest.raises(ModelError, match=r"torch.fx cannot trace Sequential"):
        api.quantize(model, api.default_plan("square", model, x), x)
