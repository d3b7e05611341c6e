"""Fake quantization (layer L1): STE, LSQ, observers, row-wise mixed schemes, error analysis."""

from mixq.quant.fakequant import fake_quant, grad_scale, snap, ste_round, unit_range
from mixq.quant.observers import ActObserver, compute_scale, scale_rows, unit_max

__all__ = [
    "ActObserver",
    "compute_scale",
    "fake_quant",
    "grad_scale",
    "scale_rows",
    "snap",
    "ste_round",
    "unit_max",
    "unit_range",
]
