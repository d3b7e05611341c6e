"""Quantization error analysis: MSE, SQNR, cosine similarity per row and per layer, and the
per-row "which scheme fits" score used by MSQ's row assignment.

>>> ref = torch.tensor([1.0, -1.0, 2.0, 0.0])
>>> round(float(sqnr_db(ref, ref + 0.1)), 2), round(float(mse(ref, ref + 0.1)), 6)
(21.76, 0.01)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mixq.formats import NumberFormat
from mixq.quant.fakequant import fake_quant
from mixq.quant.observers import compute_scale


def _dims(x: torch.Tensor, dim: int | None) -> tuple[int, ...] | None:
    """Reduce over everything (None) or over all dims except ``dim`` (per-row statistics)."""
    if dim is None:
        return None
    d = dim % x.dim()
    return tuple(i for i in range(x.dim()) if i != d)


def mse(ref: torch.Tensor, approx: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean squared error; per index of ``dim`` when given (e.g. ``dim=0`` per row)."""
    err = (ref.detach().double() - approx.detach().double()) ** 2
    dims = _dims(err, dim)
    return err.mean() if dims is None else err.mean(dim=dims)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Signal-to-quantization-noise ratio ``10·log10(Σref² / Σ(ref - approx)²)`` in dB (inf if exact)."""
    r = ref.detach().double()
    e = r - approx.detach().double()
    dims = _dims(r, dim)
    sig = (r**2).sum() if dims is None else (r**2).sum(dim=dims)
    noise = (e**2).sum() if dims is None else (e**2).sum(dim=dims)
    return 10.0 * torch.log10(sig / noise)


def cosine(a: torch.Tensor, b: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Cosine similarity of the flattened tensors (or per index of ``dim``); 1 for two zero vectors."""
    x, y = a.detach().double(), b.detach().double()
    dims = _dims(x, dim)
    dot = (x * y).sum() if dims is None else (x * y).sum(dim=dims)
    nx = (x * x).sum() if dims is None else (x * x).sum(dim=dims)
    ny = (y * y).sum() if dims is None else (y * y).sum(dim=dims)
    den = torch.sqrt(nx * ny)
    return torch.where(den > 0, dot / den.clamp(min=1e-300), torch.ones_like(dot))


def kurtosis(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Pearson kurtosis ``E[(x-μ)^4] / σ^4`` (normal 3, uniform 1.8, Laplace 6), per ``dim`` index."""
    v = x.detach().double()
    dims = _dims(v, dim)
    mu = v.mean() if dims is None else v.mean(dim=dims, keepdim=True)
    c = v - mu
    m2 = (c**2).mean() if dims is None else (c**2).mean(dim=dims)
    m4 = (c**4).mean() if dims is None else (c**4).mean(dim=dims)
    return m4 / (m2**2).clamp(min=1e-300)


class RowError(NamedTuple):
    """Per-row quantization error of a weight (each a ``(rows,)`` float64 tensor)."""

    mse: torch.Tensor
    sqnr_db: torch.Tensor
    cosine: torch.Tensor


class RowScores(NamedTuple):
    """Per-row comparison of two formats: ``ratio = mse_a / mse_b`` (< 1: ``fmt_a`` fits better)."""

    ratio: torch.Tensor
    kurtosis: torch.Tensor
    mse_a: torch.Tensor
    mse_b: torch.Tensor


def quantize_weight(w: torch.Tensor, fmt: NumberFormat, observer: str = "minmax", axis: int = 0,
                    granularity: str = "channel") -> torch.Tensor:
    """``w`` fake-quantized with per-row (``granularity``) scales from ``observer``."""
    s = compute_scale(w, fmt, granularity, observer, axis=axis)
    return fake_quant(w.detach(), fmt, s)


def per_row_error(w: torch.Tensor, fmt: NumberFormat, observer: str = "minmax", axis: int = 0) -> RowError:
    """MSE, SQNR and cosine of every row of ``w`` quantized with per-row scales."""
    wq = quantize_weight(w, fmt, observer, axis)
    return RowError(mse(w, wq, axis), sqnr_db(w, wq, axis), cosine(w, wq, axis))


def layer_error(w: torch.Tensor, fmt: NumberFormat, observer: str = "minmax", axis: int = 0,
                granularity: str = "channel") -> dict[str, float]:
    """Whole-layer MSE, SQNR (dB) and cosine for ``fmt`` with the given scale choice."""
    wq = quantize_weight(w, fmt, observer, axis, granularity)
    return {"mse": float(mse(w, wq)), "sqnr_db": float(sqnr_db(w, wq)), "cosine": float(cosine(w, wq))}


def row_scheme_scores(w: torch.Tensor, fmt_a: NumberFormat, fmt_b: NumberFormat, observer: str = "minmax",
                      axis: int = 0) -> RowScores:
    """Which format fits each row: the error ratio ``mse_a / mse_b`` and the row's kurtosis.

    With ``fmt_a`` = SP2 and ``fmt_b`` = fixed point, rows with the smallest ratio (typically
    high kurtosis, Gaussian/Laplacian-like) are the ones to give SP2 (MSQ's default rule).
    """
    ea = per_row_error(w, fmt_a, observer, axis).mse
    eb = per_row_error(w, fmt_b, observer, axis).mse
    tiny = torch.finfo(torch.float64).tiny
    ratio = (ea + tiny) / (eb + tiny)
    return RowScores(ratio, kurtosis(w, axis), ea, eb)
