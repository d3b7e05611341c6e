"""Data-movement modules the graph front end introduces when it normalises a model.

:class:`ZeroInsert` is the first half of a transposed convolution written as a
convolution (as a single-engine accelerator runs it): ``stride - 1`` zeros between
neighbouring pixels, plus ``extra`` zero rows / columns at the bottom / right
(the ``output_padding`` of the transposed conv). A ``ConvTranspose2d(k, s, p, op, d)``
is exactly ``ZeroInsert(s, op)`` followed by a ``Conv2d`` with the flipped,
in/out-swapped kernel, stride 1, dilation ``d`` and padding ``d*(k-1) - p``.
"""

from __future__ import annotations

import torch
from torch import nn


class ZeroInsert(nn.Module):
    """``(N, C, H, W) -> (N, C, (H-1)*sh + 1 + eh, (W-1)*sw + 1 + ew)``, the input at every ``s``-th pixel."""

    def __init__(self, stride: tuple[int, int], extra: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.stride = (int(stride[0]), int(stride[1]))
        self.extra = (int(extra[0]), int(extra[1]))
        if min(self.stride) < 1 or min(self.extra) < 0:
            raise ValueError(f"ZeroInsert: stride {self.stride} must be >= 1 and extra {self.extra} >= 0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        (sh, sw), (eh, ew) = self.stride, self.extra
        out = x.new_zeros(n, c, (h - 1) * sh + 1 + eh, (w - 1) * sw + 1 + ew)
        out[:, :, 0:(h - 1) * sh + 1:sh, 0:(w - 1) * sw + 1:sw] = x
        return out

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra={self.extra}"
