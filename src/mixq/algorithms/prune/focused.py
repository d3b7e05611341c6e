"""Focused quantization of pruned layers, with a fall-back to plain shift quantization.

The surviving weights of a magnitude-pruned layer are bimodal (two lobes away
from zero). :func:`choose_pruned_format` fits a two-component Gaussian mixture
to the non-zero weights (in units of ``max|w|``) and measures how well the
lobes are separated with Ashman's D = √2·|μ₁ − μ₂| / √(σ₁² + σ₂²) (D > 2 means
a clean separation) and with the *valley* of the data itself: the density of
weights in the middle half between the two means relative to the average
density between them (≈ 0 for the gap that magnitude pruning leaves, ≈ 1 for a
flat distribution, > 1 for one lobe; EM splits a flat or heavy-tailed lobe into
two components with D > 2, which the valley rejects). Separated (D ≥ 2 and
valley ≤ 0.5): :func:`mixq.formats.fit_focused` gives the
layer its own `Focused` format (per-tensor scale ``max|w|``). Not separated
(e.g. a dense layer, one lobe): plain power-of-two shift quantization with
per-row scales.

>>> g = torch.Generator().manual_seed(0)
>>> w = torch.randn(4000, generator=g)
>>> choose_pruned_format(w * (w.abs() > 1.0), 4).kind   # 68% pruned: two lobes
'focused'
>>> choose_pruned_format(w, 4).kind                       # dense Gaussian: one lobe
'pot'
>>> choose_pruned_format(torch.rand(4000, generator=g) - 0.5, 4).kind   # flat: no valley
'pot'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mixq.formats import NumberFormat, PowerOfTwo, fit_focused
from mixq.formats.focused import gmm2
from mixq.graph.bnfold import fold_bn
from mixq.plan import LayerPlan, QuantPlan


@dataclass(frozen=True)
class Separation:
    """The mixture fitted to a layer's non-zero weights (unit ``max|w|``), Ashman's D and the valley."""

    weights: tuple[float, float]
    means: tuple[float, float]
    stds: tuple[float, float]
    d: float
    valley: float

    def separated(self, min_d: float = 2.0, max_valley: float = 0.5, min_weight: float = 0.05) -> bool:
        return self.d >= min_d and self.valley <= max_valley and min(self.weights) >= min_weight


def separation(w: torch.Tensor, max_points: int = 20000) -> Separation:
    """Two-component GMM of the non-zero weights of ``w`` / max|w| and Ashman's D.

    The mixture is fitted to an even-strided subsample of at most ``max_points``
    weights (the valley uses all of them).
    """
    a = w.detach().double().flatten().numpy()
    nz = a[a != 0]
    if nz.size < 4:
        return Separation((1.0, 0.0), (0.0, 0.0), (0.0, 0.0), 0.0, math.inf)
    nz = nz / np.abs(nz).max()
    pi, mu, sd = gmm2(nz[:: max(1, math.ceil(nz.size / max_points))])
    d = math.sqrt(2.0) * abs(float(mu[1] - mu[0])) / math.sqrt(float(sd[0] ** 2 + sd[1] ** 2) + 1e-30)
    lo, hi = float(mu[0]), float(mu[1])
    between = int(((nz >= lo) & (nz <= hi)).sum())
    mid, quarter = (lo + hi) / 2, (hi - lo) / 4
    middle = int((np.abs(nz - mid) <= quarter).sum())
    valley = 2.0 * middle / between if between else math.inf
    return Separation((float(pi[0]), float(pi[1])), (lo, hi), (float(sd[0]), float(sd[1])), d, valley)


def choose_pruned_format(w: torch.Tensor, bits: int = 4, min_d: float = 2.0,
                         max_valley: float = 0.5, sep: Separation | None = None) -> NumberFormat:
    """`Focused` fitted to ``w`` when its two lobes are separated (D ≥ ``min_d``, valley ≤
    ``max_valley``, each component with at least 5% of the mass), else `PowerOfTwo` with the same bits.

    ``sep``: the :func:`separation` of ``w`` when already computed."""
    if (sep or separation(w)).separated(min_d, max_valley):
        return fit_focused(w, bits)
    return PowerOfTwo(min(bits, 7))


def focused_plan(model: nn.Module, plan: QuantPlan, masks: Mapping[str, torch.Tensor], bits: int = 4,
                 min_d: float = 2.0, fold: bool = True) -> tuple[QuantPlan, dict[str, dict[str, object]]]:
    """``plan`` with every masked layer's weight format replaced by its focused (or shift) format.

    Fitted on the weights the quantizer will see (BN folded when ``fold``), after
    masking. Focused layers get a per-tensor scale (``max|w|``, the unit of the
    fit); shift-quantized layers keep per-row scales. Returns the plan and a
    per-layer report (chosen format, D, mixture means).
    """
    m = fold_bn(model) if fold else model
    mods = dict(m.named_modules())
    report: dict[str, dict[str, object]] = {}
    out = plan
    for name, mask in masks.items():
        lp = plan.get(name) or LayerPlan()
        w = mods[name].weight.detach() * mask
        sep = separation(w)
        fmt = choose_pruned_format(w, bits, min_d, sep=sep)
        gran = "tensor" if fmt.kind == "focused" else "channel"
        out = out.with_layer(name, lp.with_(weight=fmt, weight_alt=None, alt_ratio=0.0, alt_rows=None,
                                            weight_granularity=gran, weight_observer="minmax"))
        report[name] = {"format": str(fmt), "kind": fmt.kind, "ashman_d": round(sep.d, 3),
                        "valley": round(sep.valley, 3),
                        "means": [round(v, 4) for v in sep.means], "nonzero": int((w != 0).sum())}
    return out, report
