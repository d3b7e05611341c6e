"""Output-aware per-row weight scales: pick each row's clipping by the error it causes in the output.

The weight observers (:mod:`mixq.quant.observers`) choose a row's scale from the weights alone:
``minmax`` keeps every weight, ``mse`` minimizes ``||w - Q(w)||²`` and clips the largest ones. Which
is better depends on the inputs (at W4A8 MSE wins on MobileNetV2 and loses on CNV; figures in
benchmarks/results/design_measurements.md, "Output-aware weight scales"). What counts
is the output error ``E[((w - Q(w)) · x)²]`` over the layer's real inputs ``x``. With the input's
per-feature mean ``μ`` and variance ``σ²`` (cross-covariances dropped) that is

    Σ_j Δ_j² σ_j²  +  (Σ_j Δ_j μ_j)²,      Δ = w - Q(w),

the second term being the mean output shift (which bias correction could remove afterwards; keeping
it in the search measured better with bias correction too). The result beats both observers on
both benchmark models (same section). Each row's clipping ratio is searched on a
coarse grid over ``(0, 1]`` of its largest magnitude, then refined around the best, for every row
format of the layer (fixed point and SP2 rows alike); only per-row (``channel``) scales are searched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq.algorithms.msq import scheme_from_errors
from mixq.algorithms.ptq._common import column_moments, each_layer, groups_of, run_hooked, weight_layers
from mixq.errors import DataError
from mixq.formats import NumberFormat
from mixq.quant import snap
from mixq.quant.observers import floor_rows, search_clip_ratio, unit_max


def input_feature_moments(qmodel: nn.Module, names: list[str], data: torch.Tensor,
                          batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: mean and variance ``(G, Kg)`` of every input feature of its weight rows (the unfolded
    input after the layer's own input quantizer, as its weights see it), over ``data``."""
    acc: dict[str, list[Any]] = {}

    def hook_for(name: str) -> Any:
        def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], _o: object) -> None:
            x = inp[0].detach()
            iq = getattr(m, "input_quant", None)
            if iq is not None:
                x = iq(x)
            s1, s2, k = column_moments(m, x)  # sums over the columns' positions, (G, Kg)
            a = acc.setdefault(name, [0.0, 0.0, 0])
            a[0] = a[0] + s1
            a[1] = a[1] + s2
            a[2] += k
        return hook

    run_hooked(qmodel, {n: hook_for(n) for n in names}, data, batch_size)
    out = {}
    for n, (s, s2, k) in acc.items():
        mean = s / k
        out[n] = (mean, (s2 / k - mean * mean).clamp(min=0.0))
    return out


def output_error(delta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, mean_term: bool) -> torch.Tensor:
    """``Σ_j Δ_j² σ_j² (+ (Σ_j Δ_j μ_j)²)`` for every row of ``delta`` (G, R, K) with moments (G, K).

    >>> d = torch.tensor([[[1.0, -1.0]]])
    >>> output_error(d, torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 3.0]]), True).tolist()
    [[4.0]]
    >>> output_error(d, torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 3.0]]), True).tolist()
    [[8.0]]
    """
    e = (delta * delta * var[:, None, :]).sum(dim=2)
    if mean_term:
        e = e + (delta * mean[:, None, :]).sum(dim=2) ** 2
    return e


def search_row_scales(w: torch.Tensor, fmt: NumberFormat, mean: torch.Tensor, var: torch.Tensor, *,
                      mean_term: bool = True, coarse: int = 20, fine: int = 5) -> torch.Tensor:
    """Per-row scales ``(R,)`` of the grouped weight ``w`` (G, R/G, K) minimizing :func:`output_error`, floored
    as the observers floor them (:func:`~mixq.quant.observers.floor_rows`: a dead row's scale would otherwise
    blow up its bias on the accumulator grid)."""
    w = w.double()
    top = w.abs().amax(dim=2)  # (G, Rg)
    um = unit_max(fmt)

    def err(ratio: torch.Tensor) -> torch.Tensor:
        s = (top * ratio / um).clamp(min=1e-30)[..., None]
        return output_error(snap(w, fmt, s) - w, mean, var, mean_term)

    best = search_clip_ratio(err, top, coarse, fine)
    return floor_rows((top * best / um).clamp(min=1e-30).reshape(-1))


@torch.no_grad()
def output_aware_weight_scales(qmodel: nn.Module, data: torch.Tensor, *, mean_term: bool = True,
                               images: int = 64, batch_size: int = 8, rows: bool = False,
                               keep_count: bool = True, max_bits: int | None = None) -> dict[str, dict[str, Any]]:
    """Replace the per-row weight scales of every quantized layer of ``qmodel`` (in place) by output-aware
    ones; returns per layer the summed output error before and after. With ``max_bits`` the layers
    whose weight formats are all wider keep the plan's scales.

    ``rows=True``: in layers with two row formats (MSQ) the same number of rows keeps the second
    format, but which rows is chosen again, by the smallest increase of the output error over the
    first format (``alt_rows`` in the report): the output-error version of MSQ's ranking. With
    ``keep_count=False`` the count is free: a row gets the second format exactly where its output
    error there is below the first format's (the output-error version of ``ratio="auto"``).
    """
    if data.shape[0] == 0:
        raise DataError("output-aware weight scales: 0 calibration inputs given")
    x = data[:images]
    layers: dict[str, Any] = {n: qmodel.get_submodule(n) for n in weight_layers(qmodel, x[:1], max_bits)}
    names = [n for n, m in layers.items() if m.plan.weight_granularity == "channel"]
    if not names:
        return {}
    moments = input_feature_moments(qmodel, names, x, batch_size)
    report: dict[str, dict[str, Any]] = {}
    for n in each_layer("ptq weight_scales", names):
        layer: Any = qmodel.get_submodule(n)
        mean, var = moments[n]
        g = groups_of(layer)
        wg = layer.weight.detach().reshape(g, layer.weight.shape[0] // g, -1)
        n_rows = layer.weight.shape[0]
        shape = layer.w_scales.shape[1:]
        before = _layer_error(layer, wg, mean, var, mean_term)
        # per format and row, the searched scale or the plan's, whichever gives the smaller error:
        # no row gets worse in any of its formats, whatever row assignment follows
        scales, errors = [], []
        for k, fmt in enumerate(layer.formats):
            old = layer.w_scales[k].double().reshape(wg.shape[0], -1, 1)
            new = search_row_scales(wg, fmt, mean, var, mean_term=mean_term).reshape(old.shape)
            e_old, e_new = (output_error(snap(wg.double(), fmt, sc) - wg.double(), mean, var, mean_term)
                            for sc in (old, new))
            keep = (e_old < e_new)[..., None]
            scales.append(torch.where(keep, old, new).reshape(shape).to(layer.w_scales.dtype))
            errors.append(torch.minimum(e_old, e_new).reshape(-1))
        layer.w_scales = torch.stack(scales)
        if rows and len(layer.formats) == 2:
            count = int((layer.row_scheme == 1).sum()) if keep_count else None
            layer.row_scheme = scheme_from_errors(torch.stack(errors), count).to(layer.row_scheme.dtype)
        after = _layer_error(layer, wg, mean, var, mean_term)
        report[n] = {"error_before": before, "error_after": after, "rows": float(n_rows)}
        if rows and len(layer.formats) == 2:
            report[n]["alt_rows"] = [int(i) for i in torch.nonzero(layer.row_scheme == 1).flatten().tolist()]
    return report


def _layer_error(layer: Any, wg: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, mean_term: bool) -> float:
    q = layer.quantized_weight().detach().reshape(wg.shape)
    return float(output_error((q - wg).double(), mean, var, mean_term).sum())
