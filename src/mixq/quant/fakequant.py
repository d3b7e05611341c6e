"""Fake quantization with the straight-through estimator (STE).

``fake_quant(x, fmt, scale)`` returns ``dequantize(quantize(x, scale), scale)``
in ``x``'s dtype. Its gradient with respect to ``x`` is the identity where the
value is not clipped and zero where it is (the clipped STE). "Not clipped" means
``x / scale`` lies within the extreme levels widened by half the gap to their
neighbours, i.e. it rounds to an extreme level without saturating — for fixed
point exactly PyTorch's ``fake_quantize`` rule ``qmin <= round(x/s) <= qmax``
(open interval at the half-step edges). ``scale`` gets no gradient here (see
:mod:`mixq.quant.lsq` for a learnable step).

>>> from mixq.formats import FixedPoint
>>> x = torch.tensor([0.26, -1.0, 3.7, 5.0], requires_grad=True)
>>> y = fake_quant(x, FixedPoint(4, narrow=True), 0.5)
>>> y.tolist()
[0.5, -1.0, 3.5, 3.5]
>>> y.sum().backward(); x.grad.tolist()
[1.0, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import torch

from mixq.formats import NumberFormat


def unit_range(fmt: NumberFormat) -> tuple[float, float]:
    """Smallest and largest unit-scale level of ``fmt``."""
    lv = fmt.levels()
    return float(lv[0]), float(lv[-1])


def pass_range(fmt: NumberFormat) -> tuple[float, float]:
    """Unit-scale interval where no clipping happens: the extreme levels widened by half the
    gap to their neighbours (for fixed point: ``round(x/s)`` within ``[qmin, qmax]``)."""
    lv = fmt.levels()
    if lv.size < 2:
        return float(lv[0]), float(lv[-1])
    return float(lv[0] - (lv[1] - lv[0]) / 2), float(lv[-1] + (lv[-1] - lv[-2]) / 2)


def snap(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor | float) -> torch.Tensor:
    """Nearest level times scale, in ``x``'s dtype (no gradient bookkeeping)."""
    f: Any = fmt
    if hasattr(f, "snap"):
        return f.snap(x, scale)  # type: ignore[no-any-return]
    return fmt.dequantize(fmt.quantize(x, scale), scale).to(x.dtype)


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor) -> torch.Tensor:
        lo, hi = pass_range(fmt)
        s = scale.to(x.dtype)
        y = x / s
        inside = (y > lo) & (y < hi)
        ctx.save_for_backward(inside)
        return snap(x, fmt, s)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (inside,) = ctx.saved_tensors
        g = grads[0]
        return g * inside.to(g.dtype), None, None


def fake_quant(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor | float) -> torch.Tensor:
    """Quantize-dequantize ``x`` with ``fmt`` at ``scale`` (broadcastable), clipped STE gradient."""
    s = scale.detach() if isinstance(scale, torch.Tensor) else torch.tensor(float(scale))
    s = s.to(device=x.device)
    if not s.is_floating_point():
        s = s.to(x.dtype)
    if not x.requires_grad:
        return snap(x, fmt, s.to(x.dtype))
    return _FakeQuantSTE.apply(x, fmt, s)  # type: ignore[no-any-return]


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``g`` (the LSQ trick)."""
    return (x - x * g).detach() + x * g
