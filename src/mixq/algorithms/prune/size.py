"""Storage of a (pruned) quantized model: dense or bitmap-sparse per layer, whichever is smaller.

The dense count is that of ``mixq.api.model_size_bytes``: a quantized layer's
weights at their format's storage bits, a 32-bit scale per row and format, one
bit per row for the scheme mask of a mixed layer, a 32-bit bias; other
parameters at 32 bits. A sparse layer may instead store a 1-bit occupancy
bitmap plus the non-zero weights only (each at its row's storage bits); rows
that are entirely zero with a zero bias (pruned channels) store nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq.nn import QConv2d, QLinear


def _layer_bits(m: QConv2d | QLinear) -> tuple[int, int]:
    """(dense bits, sparse bits) of one quantized layer."""
    w = m.weight.detach()
    rows = w.shape[0]
    per_row = w[0].numel()
    bias_bits = 32 * m.bias.numel() if m.bias is not None else 0
    if not m.formats:
        dense = 32 * w.numel() + bias_bits
        return dense, dense
    fmts = m.row_formats()
    meta = 32 * rows * len(m.formats) + (rows if len(m.formats) > 1 else 0)
    dense = sum(f.storage_bits for f in fmts) * per_row + meta + bias_bits
    q = m.quantized_weight().detach().reshape(rows, -1)
    nnz = (q != 0).sum(dim=1)
    bias = m.bias.detach() if m.bias is not None else torch.zeros(rows)
    live = (nnz > 0) | (bias != 0)
    n_live = int(live.sum())
    sparse = sum(int(nnz[r]) * fmts[r].storage_bits for r in range(rows) if live[r])
    sparse += n_live * per_row  # occupancy bitmap of the rows that are kept
    sparse += n_live * 32 * len(m.formats) + (n_live if len(m.formats) > 1 else 0)
    sparse += 32 * n_live if m.bias is not None else 0
    return dense, sparse


@torch.no_grad()
def sparse_size_bytes(model: nn.Module) -> dict[str, Any]:
    """``{"bytes", "dense_bytes", "layers": {name: {"dense_bits", "sparse_bits", "sparse"}}}``."""
    total, dense_total = 0, 0
    layers: dict[str, dict[str, Any]] = {}
    counted: set[str] = set()
    for name, m in model.named_modules():
        if not isinstance(m, QConv2d | QLinear):
            continue
        dense, sparse = _layer_bits(m)
        best = min(dense, sparse)
        total += best
        dense_total += dense
        layers[name] = {"dense_bits": dense, "sparse_bits": sparse, "sparse": sparse < dense}
        counted.update({f"{name}.weight", f"{name}.bias"})
    for pname, p in model.named_parameters():
        if pname not in counted:
            total += 32 * p.numel()
            dense_total += 32 * p.numel()
    return {"bytes": (total + 7) // 8, "dense_bytes": (dense_total + 7) // 8, "layers": layers}
