"""Fake quantization (layer L1): STE, LSQ, observers, row-wise mixed schemes, error analysis."""

from mixq.quant.analysis import (
    RowError,
    RowScores,
    cosine,
    kurtosis,
    layer_error,
    mse,
    per_row_error,
    quantize_weight,
    row_scheme_scores,
    sqnr_db,
)
from mixq.quant.fakequant import fake_quant, grad_scale, pass_range, snap, ste_round, unit_range
from mixq.quant.lsq import LsqQuantizer, lsq_quant, positive_levels
from mixq.quant.observers import GRANULARITIES, OBSERVERS, ActObserver, compute_scale, scale_rows, unit_max
from mixq.quant.rows import dequantize_rows, fake_quant_rows, quantize_rows, row_scales

__all__ = [
    "GRANULARITIES",
    "OBSERVERS",
    "ActObserver",
    "LsqQuantizer",
    "RowError",
    "RowScores",
    "compute_scale",
    "cosine",
    "dequantize_rows",
    "fake_quant",
    "fake_quant_rows",
    "grad_scale",
    "kurtosis",
    "layer_error",
    "lsq_quant",
    "mse",
    "pass_range",
    "per_row_error",
    "positive_levels",
    "quantize_rows",
    "quantize_weight",
    "row_scales",
    "row_scheme_scores",
    "scale_rows",
    "snap",
    "sqnr_db",
    "ste_round",
    "unit_max",
    "unit_range",
]
