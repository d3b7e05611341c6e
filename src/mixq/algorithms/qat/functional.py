"""The math of QAT as pure functions: weight quantizers and gradient quantization (distillation, schedule
and augmentation belong to the one training loop, :mod:`mixq.training`).

Every function here takes tensors and formats and returns tensors; the modules
in :mod:`mixq.algorithms.qat.modules` only hold state and call them.

>>> w = torch.tensor([[0.5, -0.1, 0.3], [-2.0, 1.0, 0.0]])
>>> xnor_weight(w).tolist()  # α·sign(w), α = mean|w| per row, sign(0) = +1
[[0.30000001192092896, -0.30000001192092896, 0.30000001192092896], [-1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mixq.formats import Binary, FixedPoint, NumberFormat
from mixq.quant import fake_quant, positive_levels, snap, unit_range

EPS = 1e-8


def row_shape(w: torch.Tensor) -> tuple[int, ...]:
    """``(rows, 1, ...)``: the shape of one value per row (output channel) of ``w``."""
    return (w.shape[0],) + (1,) * (w.dim() - 1)


def straight_through(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exactly ``value`` in the forward pass, the gradient of ``x`` in the backward pass.

    (``x + (value - x).detach()`` can be an ulp off ``value``; the QAT forward must
    equal, bit for bit, what the plain quantized model computes.)
    """
    return value.detach() + (x - x.detach())


def exact_grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Exactly ``x`` forward, gradient multiplied by ``g`` (LSQ's step-gradient scale)."""
    xg = x * g
    return x.detach() + (xg - xg.detach())


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, fmt: NumberFormat, g: float) -> torch.Tensor:
    """LSQ (Esser et al. 2020): ``s·level(clamp(x/s, lo, hi))`` with LSQ's gradients for ``x`` and ``s``.

    The forward value is exactly ``snap(x, fmt, s)`` (nearest level at scale ``s``), the
    plain model's fake quantization; ``∂/∂s`` is ``level − x/s`` inside the range and
    ``lo``/``hi`` outside, scaled by ``g``.
    """
    lo, hi = unit_range(fmt)
    s = exact_grad_scale(step, g)
    y = torch.clamp(x / s, lo, hi)
    return straight_through(snap(y.detach(), fmt, 1.0), y) * s


def xnor_alpha(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's per-row scale ``α = mean|w|`` (detached), shaped ``(rows, 1, ...)``."""
    a = w.detach().abs().reshape(w.shape[0], -1).mean(dim=1)
    return torch.where(a > 0, a, torch.ones_like(a)).reshape(row_shape(w))


def xnor_weight(w: torch.Tensor) -> torch.Tensor:
    """``α·sign(w)`` per row (``sign(0) = +1``, Binary's tie rule) with a straight-through gradient."""
    a = xnor_alpha(w)
    q = torch.where(w.detach() >= 0, a, -a)
    return straight_through(q, w)


def dorefa_weight(w: torch.Tensor, fmt: NumberFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """DoReFa weights for a signed fixed-point ``fmt``: ``(fake-quantized weight, its per-row scale)``.

    ``t = tanh(w) / max|tanh(w)|`` lies in ``[-1, 1]`` and is quantized uniformly on
    ``qmax`` steps per side (DoReFa's ``2·q_k(t/2 + 1/2) - 1`` on the format's symmetric
    grid); the result is multiplied by ``c = max|w|`` (detached) so the layer keeps its
    magnitude when BatchNorm has been folded into it. The integer engine sees the
    weight ``c·t`` at scale ``c / qmax``.
    """
    if not isinstance(fmt, FixedPoint) or not fmt.signed:
        from mixq.algorithms.qat.config import QatError

        raise QatError(f"weight_quant=dorefa: needs a signed fixed-point weight format, got {fmt}")
    t = torch.tanh(w)
    t = t / t.detach().abs().max().clamp_min(EPS)
    c = w.detach().abs().max().clamp_min(EPS)
    s = (c / fmt.qmax).expand(row_shape(w))
    return fake_quant(c * t, fmt, s), s


def lsq_weight(w: torch.Tensor, fmt: NumberFormat, step: torch.Tensor) -> torch.Tensor:
    """LSQ fake-quantization of ``w`` with a learned ``step`` (broadcastable, kept positive).

    The step gradient is scaled by ``1/sqrt(n · Q_P)``, ``n`` the weights sharing one step.
    """
    n = max(1, w.numel() // max(1, step.numel()))
    g = 1.0 / math.sqrt(n * positive_levels(fmt))
    return lsq_fake_quant(w, step.abs().clamp_min(EPS), fmt, g)


def mixed_rows(parts: Sequence[torch.Tensor], row_scheme: torch.Tensor) -> torch.Tensor:
    """Row ``r`` of the result is row ``r`` of ``parts[row_scheme[r]]``."""
    out = parts[0]
    for k in range(1, len(parts)):
        mask = (row_scheme == k).reshape(row_shape(out))
        out = torch.where(mask, parts[k], out)
    return out


def lsq_act(x: torch.Tensor, fmt: NumberFormat, step: torch.Tensor) -> torch.Tensor:
    """LSQ activation quantizer; the step gradient is scaled by ``1/sqrt(features · Q_P)``.

    ``features`` is the number of values of *one sample* (LSQ's N_F), so the
    gradient does not depend on the batch size and data-parallel shards agree.
    """
    n = max(1, x[0].numel() if x.dim() > 1 else x.numel())
    g = 1.0 / math.sqrt(n * positive_levels(fmt))
    return lsq_fake_quant(x, step.abs().clamp_min(EPS), fmt, g)


def is_binary(fmt: NumberFormat) -> bool:
    return isinstance(fmt, Binary)


class _QuantGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bits: int, gen: torch.Generator | None) -> torch.Tensor:
        ctx.bits, ctx.gen = bits, gen
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return quantize_gradient(grads[0], ctx.bits, ctx.gen), None, None


def quantize_gradient(g: torch.Tensor, bits: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """DoReFa's stochastic gradient quantizer, per sample (dim 0).

    ``ĝ = 2·m·(q_k(g / 2m + 1/2 + ξ) − 1/2)`` with ``m = max|g|`` over a sample,
    ``q_k`` rounding to ``k``-bit levels of ``[0, 1]`` and ``ξ ~ U(−1/2, 1/2)/(2^k − 1)``.
    Unbiased in expectation; ``gen`` makes the noise reproducible (drawn on ``gen``'s device, then moved
    to ``g``'s if they differ).
    """
    levels = float(2**bits - 1)
    m = g.detach().abs().reshape(g.shape[0], -1).amax(dim=1).clamp_min(1e-30)
    m = m.reshape((g.shape[0],) + (1,) * (g.dim() - 1))
    u = g / (2 * m) + 0.5
    where = g.device if gen is None else gen.device
    noise = (torch.rand(g.shape, generator=gen, dtype=g.dtype, device=where).to(g.device) - 0.5) / levels
    q = torch.round((u + noise).clamp(0, 1) * levels) / levels
    return 2 * m * (q - 0.5)


def quant_grad(x: torch.Tensor, bits: int | None, gen: torch.Generator | None = None) -> torch.Tensor:
    """Identity forward; the gradient through ``x`` is quantized to ``bits`` (no-op for ``None``)."""
    if bits is None or not x.requires_grad:
        return x
    return _QuantGrad.apply(x, bits, gen)  # type: ignore[no-any-return]
