"""Row-wise mixed schemes: one weight tensor whose rows (output channels) use different formats.

MSQ puts some rows in SP2 (LUT shift-add core) and the rest in fixed point
(DSP core). A layer's weight is then described by a tuple of ``formats``, a
``row_scheme`` (int per row: its index into ``formats``) and one scale per row.
Rows are indexed along ``axis`` (0, the output channels, by default).

>>> from mixq.formats import FixedPoint, SumOfPowers
>>> w = torch.tensor([[0.1, -0.9], [0.3, 0.45]])
>>> q, s = quantize_rows(w, (FixedPoint(4, narrow=True), SumOfPowers(4)), torch.tensor([0, 1]))
>>> q.tolist()  # row 0: fixed-point integers; row 1: SP2 integer levels (frac_bits 3)
[[1, -7], [5, 8]]
>>> dequantize_rows(q, (FixedPoint(4, narrow=True), SumOfPowers(4)), torch.tensor([0, 1]), s)[1].tolist()
[0.28125, 0.44999998807907104]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mixq.errors import MixqError
from mixq.formats import NumberFormat
from mixq.quant.fakequant import fake_quant
from mixq.quant.observers import compute_scale


def _scheme(row_scheme: Any, rows: int, n_formats: int, device: torch.device | None = None) -> torch.Tensor:
    s = torch.as_tensor(row_scheme, dtype=torch.long).flatten().to(device)
    if s.numel() != rows:
        raise MixqError(f"row_scheme: has {s.numel()} entries for {rows} rows")
    if s.numel() and (int(s.min()) < 0 or int(s.max()) >= n_formats):
        raise MixqError(f"row_scheme: entries must index the {n_formats} formats, got {s.unique().tolist()}")
    return s


def _row_shape(w: torch.Tensor, axis: int) -> list[int]:
    shape = [1] * w.dim()
    shape[axis % w.dim()] = w.shape[axis % w.dim()]
    return shape


def row_scales(w: torch.Tensor, formats: Sequence[NumberFormat], row_scheme: Any, observer: str = "minmax",
               axis: int = 0, percentile: float = 99.99) -> torch.Tensor:
    """One scale per row, each from its own format; shaped to broadcast (e.g. ``(C, 1, 1, 1)``)."""
    ax = axis % w.dim()
    rows = w.shape[ax]
    scheme = _scheme(row_scheme, rows, len(formats), w.device)
    wt = w.detach().movedim(ax, 0)
    scales = torch.ones(rows, dtype=w.dtype if w.is_floating_point() else torch.float32, device=w.device)
    for k, fmt in enumerate(formats):
        idx = (scheme == k).nonzero().flatten()
        if idx.numel():
            s = compute_scale(wt.index_select(0, idx), fmt, "channel", observer, 0, percentile=percentile)
            scales[idx] = s.flatten().to(scales.dtype)
    return scales.reshape(_row_shape(w, ax))


def quantize_rows(w: torch.Tensor, formats: Sequence[NumberFormat], row_scheme: Any, observer: str = "minmax",
                  axis: int = 0, scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer levels of every row in its own format, and the per-row scales.

    Returns ``(q, scales)``: ``q`` is int64 with ``w``'s shape (each row's integers are
    in *its* format's units, ``2**-frac_bits`` of that format), ``scales`` broadcastable.
    """
    ax = axis % w.dim()
    scheme = _scheme(row_scheme, w.shape[ax], len(formats), w.device)
    if scales is None:
        scales = row_scales(w, formats, scheme, observer, ax)
    wt = w.detach().movedim(ax, 0)
    st = scales.detach().reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.zeros(wt.shape, dtype=torch.int64, device=w.device)
    for k, fmt in enumerate(formats):
        idx = (scheme == k).nonzero().flatten()
        if idx.numel():
            q[idx] = fmt.quantize(wt.index_select(0, idx), st.index_select(0, idx))
    return q.movedim(0, ax), scales


def dequantize_rows(q: torch.Tensor, formats: Sequence[NumberFormat], row_scheme: Any, scales: torch.Tensor,
                    axis: int = 0) -> torch.Tensor:
    """Inverse of :func:`quantize_rows` (float, ``scales``' dtype)."""
    ax = axis % q.dim()
    scheme = _scheme(row_scheme, q.shape[ax], len(formats), q.device)
    qt = q.movedim(ax, 0)
    st = scales.reshape(-1, *([1] * (q.dim() - 1)))
    out = torch.zeros(qt.shape, dtype=scales.dtype if scales.is_floating_point() else torch.float32,
                      device=q.device)
    for k, fmt in enumerate(formats):
        idx = (scheme == k).nonzero().flatten()
        if idx.numel():
            out[idx] = fmt.dequantize(qt.index_select(0, idx), st.index_select(0, idx)).to(out.dtype)
    return out.movedim(0, ax)


def fake_quant_rows(w: torch.Tensor, formats: Sequence[NumberFormat], row_scheme: Any, scales: torch.Tensor,
                    axis: int = 0) -> torch.Tensor:
    """Fake-quantize each row with its own format and scale (clipped STE, differentiable in ``w``)."""
    ax = axis % w.dim()
    scheme = _scheme(row_scheme, w.shape[ax], len(formats), w.device)
    wt = w.movedim(ax, 0)
    st = scales.detach().reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype)
    out = torch.zeros_like(wt)
    for k, fmt in enumerate(formats):
        idx = (scheme == k).nonzero().flatten()
        if idx.numel():
            part = fake_quant(wt.index_select(0, idx), fmt, st.index_select(0, idx))
            out = out.index_copy(0, idx, part)
    return out.movedim(0, ax)
