"""The one storage rule of a (quantized) model: what its parameters take in memory, dense or
bitmap-sparse per layer.

Dense (:func:`model_size_bytes`, also ``mixq.api.model_size_bytes``): a quantized layer's weights at
their format's storage bits, a 32-bit scale per row and format, one bit per row for the scheme
mask of a mixed layer, a 32-bit bias; other parameters (and layers without formats) at 32 bits.
Sparse (:func:`sparse_size_bytes`): a layer may instead store a 1-bit occupancy bitmap plus the
non-zero weights only (each at its row's storage bits), whichever is smaller; rows that are
entirely zero with a zero bias (pruned channels) store nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq.nn.modules import QConv2d, QLinear


def _dense_bits(m: QConv2d | QLinear) -> int:
    """Bits of one quantized layer stored densely."""
    w = m.weight
    rows, per_row = w.shape[0], w[0].numel()
    bias_bits = 32 * m.bias.numel() if m.bias is not None else 0
    if not m.formats:
        return 32 * w.numel() + bias_bits
    meta = 32 * rows * len(m.formats) + (rows if len(m.formats) > 1 else 0)
    return sum(f.storage_bits for f in m.row_formats()) * per_row + meta + bias_bits


def _sparse_bits(m: QConv2d | QLinear) -> int:
    """Bits of one quantized layer stored as a bitmap plus its non-zero weights (layers with formats)."""
    fmts = m.row_formats()
    rows, per_row = m.weight.shape[0], m.weight[0].numel()
    q = m.quantized_weight().detach().reshape(rows, -1)
    nnz = (q != 0).sum(dim=1)
    bias = m.bias.detach() if m.bias is not None else torch.zeros(rows)
    live = (nnz > 0) | (bias != 0)
    n_live = int(live.sum())
    bits = sum(int(nnz[r]) * fmts[r].storage_bits for r in range(rows) if live[r])
    bits += n_live * per_row  # occupancy bitmap of the rows that are kept
    bits += n_live * 32 * len(m.formats) + (n_live if len(m.formats) > 1 else 0)
    bits += 32 * n_live if m.bias is not None else 0
    return bits


def _others_bits(model: nn.Module, counted: set[str]) -> int:
    return sum(32 * p.numel() for name, p in model.named_parameters() if name not in counted)


def _layers(model: nn.Module) -> list[tuple[str, QConv2d | QLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QConv2d | QLinear)]


def model_size_bytes(model: nn.Module) -> int:
    """Dense storage of the model's parameters, in bytes (bits rounded up)."""
    counted: set[str] = set()
    bits = 0
    for name, m in _layers(model):
        bits += _dense_bits(m)
        counted.update({f"{name}.weight", f"{name}.bias"})
    return (bits + _others_bits(model, counted) + 7) // 8


@torch.no_grad()
def sparse_size_bytes(model: nn.Module) -> dict[str, Any]:
    """``{"bytes", "dense_bytes", "layers": {name: {"dense_bits", "sparse_bits", "sparse"}}}``: each
    quantized layer stored dense or sparse, whichever is smaller (``dense_bytes``: all dense)."""
    total, dense_total = 0, 0
    layers: dict[str, dict[str, Any]] = {}
    counted: set[str] = set()
    for name, m in _layers(model):
        dense = _dense_bits(m)
        sparse = _sparse_bits(m) if m.formats else dense
        total += min(dense, sparse)
        dense_total += dense
        layers[name] = {"dense_bits": dense, "sparse_bits": sparse, "sparse": sparse < dense}
        counted.update({f"{name}.weight", f"{name}.bias"})
    others = _others_bits(model, counted)
    return {"bytes": (total + others + 7) // 8, "dense_bytes": (dense_total + others + 7) // 8, "layers": layers}
