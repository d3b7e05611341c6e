"""LSQ: learned step size quantization (Esser et al., ICLR 2020).

Forward: ``x̂ = s · level(clamp(x / s, lo, hi))`` with ``level`` the nearest
unit-scale level of the format (``round`` for fixed point) taken with a
straight-through gradient. The resulting gradients are LSQ's::

    ∂x̂/∂s = level(x/s) - x/s   inside the range,   lo or hi   outside it
    ∂x̂/∂x = 1 inside, 0 outside

and the step's gradient is multiplied by ``g = 1 / sqrt(n · Q_P)`` where ``n`` is
the number of elements sharing one step (all of ``x`` per tensor, ``x.numel() / C``
per channel; override with ``grad_numel``) and ``Q_P`` the number of positive
levels (``qmax`` for fixed point).

Initialisation (on the first forward, or explicitly with ``init_from``): the
LSQ rule ``s = 2·mean|x| / sqrt(Q_P)`` for fixed point, the MSE-optimal scale
(``compute_scale(..., observer="mse")``) for other formats.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mixq.formats import FixedPoint, NumberFormat
from mixq.quant.fakequant import grad_scale, snap, unit_range
from mixq.quant.observers import compute_scale


def positive_levels(fmt: NumberFormat) -> int:
    """``Q_P``: ``qmax`` for fixed point, else the number of positive levels."""
    if isinstance(fmt, FixedPoint):
        return fmt.qmax
    return max(1, int((fmt.levels() > 0).sum()))


def lsq_quant(x: torch.Tensor, step: torch.Tensor, fmt: NumberFormat, g: float) -> torch.Tensor:
    """The LSQ fake-quantizer as a pure function (``step`` broadcastable against ``x``)."""
    lo, hi = unit_range(fmt)
    s = grad_scale(step, g)
    y = torch.clamp(x / s, lo, hi)
    yq = y + (snap(y.detach(), fmt, 1.0) - y).detach()
    return yq * s


class LsqQuantizer(nn.Module):
    """Learnable-step quantizer for one tensor (``granularity`` ``"tensor"`` or ``"channel"``).

    ``channels`` must be given for ``channel`` granularity (the size of ``axis``).
    """

    def __init__(self, fmt: NumberFormat, granularity: str = "tensor", axis: int = 0,
                 channels: int | None = None, grad_numel: int | None = None) -> None:
        super().__init__()
        if granularity not in ("tensor", "channel"):
            from mixq.errors import MixqError

            raise MixqError(f"LsqQuantizer.granularity: {granularity!r} is not 'tensor' or 'channel'")
        if granularity == "channel" and not channels:
            from mixq.errors import MixqError

            raise MixqError("LsqQuantizer.channels: channel granularity needs the channel count")
        self.fmt = fmt
        self.granularity = granularity
        self.axis = axis
        self.grad_numel = grad_numel
        self.step = nn.Parameter(torch.ones(channels if granularity == "channel" else ()))  # type: ignore[arg-type]
        self.initialized: torch.Tensor
        self.register_buffer("initialized", torch.tensor(False))

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        if self.granularity == "channel":
            shape[self.axis % x.dim()] = -1
        return shape

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Set the step from data (LSQ rule for fixed point, MSE scale otherwise)."""
        x = x.detach()
        if isinstance(self.fmt, FixedPoint):
            qp = positive_levels(self.fmt)
            if self.granularity == "channel":
                ax = self.axis % x.dim()
                mean_abs = x.abs().movedim(ax, 0).reshape(x.shape[ax], -1).mean(dim=1)
            else:
                mean_abs = x.abs().mean()
            s = 2.0 * mean_abs / math.sqrt(qp)
        else:
            gran = "channel" if self.granularity == "channel" else "tensor"
            s = compute_scale(x, self.fmt, gran, "mse", axis=self.axis).reshape(self.step.shape)
        s = torch.where(s > 0, s, torch.ones_like(s))
        self.step.copy_(s.reshape(self.step.shape).to(self.step.dtype))
        self.initialized.fill_(True)

    def grad_factor(self, x: torch.Tensor) -> float:
        """The step-gradient scale ``1 / sqrt(n · Q_P)``."""
        n = self.grad_numel or max(1, x.numel() // max(1, self.step.numel()))
        return 1.0 / math.sqrt(n * positive_levels(self.fmt))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        step = self.step.reshape(self._shape(x)).to(x.dtype)
        return lsq_quant(x, step, self.fmt, self.grad_factor(x))

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, granularity={self.granularity}"
