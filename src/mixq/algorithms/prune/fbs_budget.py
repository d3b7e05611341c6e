"""Per-layer FBS densities chosen against a MAC budget: the multiple-choice knapsack of the search.

Each gated layer may keep a fraction ``d`` of its output channels from :data:`DENSITIES`. Its
*sensitivity* at ``d`` is measured, not guessed: the model with only that layer at ``d`` (every other
layer keeps all its channels, the predictors as :func:`~mixq.algorithms.prune.fbs.fit_predictors` left
them) is run on calibration images and compared with the dense model — the mean KL divergence of their
outputs (classifiers) or the mean squared error over the output's mean square (other outputs). Its
*cost* at ``d`` is the layer's MACs times ``d``: what it computes of its output channels (the channels
the layer before it skipped save more, so the executed MACs are at most the budget). The search's ILP
(:func:`mixq.algorithms.search.solvers.solve_ilp`) then picks one density per layer with the least total
sensitivity whose cost fits ``budget x`` the dense MACs of the gated layers.

A frames/s budget (:func:`fps_config`) is the same knapsack with each layer's cost its time on the
layer-sequential overlay at that density (:func:`mixq.hw.dynamic.overlay_choices`) and the capacity the frame
time left after the layers that are not gated and the predictors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixq.algorithms.prune.fbs import FbsConfig, FbsError, fit_predictors, to_fbs
from mixq.algorithms.search.solvers import Item, Problem, solve_ilp
from mixq.graph.spec import LayerSpec
from mixq.modes import eval_mode
from mixq.nn.fbs import fbs_layers, keep_count
from mixq.plan import QuantPlan

DENSITIES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)


@dataclass(frozen=True)
class DensityChoice:
    densities: dict[str, float]
    sensitivity: dict[str, tuple[float, ...]]  # per layer, per density of ``grid``
    grid: tuple[float, ...]
    cost_macs: int  # the chosen densities' MACs on the output side (an upper bound of the executed ones)
    budget_macs: int
    fps: float = 0.0  # a frames/s budget (fps_config): the overlay's rate at the chosen densities, a lower bound
    budget_fps: float = 0.0


def _divergence(ref: torch.Tensor, y: torch.Tensor) -> float:
    if ref.dim() == 2:  # logits: KL(dense || gated)
        return float(F.kl_div(F.log_softmax(y, 1), F.log_softmax(ref, 1), log_target=True,
                              reduction="batchmean"))
    return float(((y - ref) ** 2).mean() / (ref ** 2).mean().clamp_min(1e-12))


@torch.no_grad()
def density_sensitivity(model: nn.Module, dense: nn.Module, x: torch.Tensor,
                        grid: Sequence[float] = DENSITIES) -> dict[str, tuple[float, ...]]:
    """Per FBS layer of ``model``, the output divergence from ``dense`` with that layer alone at each density
    of ``grid`` (see the module docstring). ``model``'s densities are restored."""
    layers = fbs_layers(model)
    if not layers:
        raise FbsError("density_sensitivity: the model has no FBS layer (convert it with to_fbs first)")
    saved = {n: m.k for n, m in layers.items()}
    out: dict[str, tuple[float, ...]] = {}
    try:
        with eval_mode(dense), eval_mode(model):
            ref = dense(x)
            for m in layers.values():
                m.k = m.conv.out_channels
            for n, m in layers.items():
                row = []
                for d in grid:
                    m.k = keep_count(d, m.conv.out_channels)
                    row.append(_divergence(ref, model(x)))
                m.k = m.conv.out_channels
                out[n] = tuple(row)
    finally:
        for n, m in layers.items():
            m.k = saved[n]
    return out


def choose_densities(sens: Mapping[str, Sequence[float]], specs: Sequence[LayerSpec], budget: float,
                     grid: Sequence[float] = DENSITIES) -> DensityChoice:
    """One density per layer of ``sens`` (from ``grid``) with the least total sensitivity whose MACs on the
    output side fit ``budget`` (a fraction in (0, 1]) of the gated layers' dense MACs."""
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 1:
        raise FbsError(f"MAC budget: must be a fraction in (0, 1], got {budget!r}")
    macs = {s.name: s.macs for s in specs}
    missing = [n for n in sens if n not in macs]
    if missing:
        raise FbsError(f"choose_densities: no layer spec for {missing[0]!r}")
    names = list(sens)
    cap = budget * sum(macs[n] for n in names)
    chosen = _knapsack(sens, {n: [macs[n] * d for d in grid] for n in names}, cap, grid,
                       f"MAC budget {budget:g}: below what the lowest density ({min(grid):g}) reaches")
    return DensityChoice(chosen, {n: tuple(float(v) for v in sens[n]) for n in names}, tuple(grid),
                         int(round(sum(macs[n] * chosen[n] for n in names))), int(round(cap)))


def _knapsack(sens: Mapping[str, Sequence[float]], cost: Mapping[str, Sequence[float]], cap: float,
              grid: Sequence[float], too_low: str) -> dict[str, float]:
    """One density of ``grid`` per layer with the least total sensitivity whose total ``cost`` fits ``cap``
    (the search's ILP); ``too_low`` is the error when even the cheapest choice does not fit."""
    names = list(sens)
    if sum(min(cost[n]) for n in names) > cap + 1e-6 * abs(cap):
        raise FbsError(too_low)
    items = tuple(tuple(Item(float(s), (float(c),)) for s, c in zip(sens[n], cost[n], strict=True)) for n in names)
    sol = solve_ilp(Problem(items, (cap,)))
    if sol is None:  # pragma: no cover - the cheapest choice fits (checked above)
        raise FbsError(too_low)
    return {n: float(grid[i]) for n, i in zip(names, sol.picks, strict=True)}


def fps_config(model: nn.Module, x: torch.Tensor, fps: float, cfg: FbsConfig, plan: QuantPlan,
               part: str = "xc7z020", grid: Sequence[float] = DENSITIES) -> tuple[FbsConfig, DensityChoice]:
    """``cfg`` with per-layer densities chosen so the layer-sequential overlay on ``part`` runs at least ``fps``
    frames/s (:func:`mixq.hw.dynamic.overlay_choices` under ``plan``, the dense model's plan): each gated layer's
    cost at a density is its overlay time computing that share of its output channels over all its input
    channels — an upper bound, as the channels an earlier layer suppressed only shorten it — the other layers
    and every predictor a fixed share of the frame; sensitivities and the knapsack as :func:`budget_config`.
    A rate the lowest densities cannot reach is refused with the best one they reach."""
    from mixq.hw.dynamic import overlay_choices

    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < float("inf"):
        raise FbsError(f"frames/s budget: must be a finite number > 0, got {fps!r}")
    sens, specs = _sensitivities(model, x, cfg, grid)
    by = {s.name: s for s in specs}
    options = {n: [(by[n].in_channels, keep_count(d, by[n].out_channels)) for d in grid] for n in sens}
    seconds, fixed = overlay_choices(specs, plan, options, part)
    best = 1.0 / (fixed + sum(min(v) for v in seconds.values()))
    chosen = _knapsack(sens, seconds, 1.0 / fps - fixed, grid, f"frames/s budget {fps:g}: above the {best:.4g} "
                       f"frames/s the lowest density ({min(grid):g}) reaches on {part}")
    at = {d: i for i, d in enumerate(grid)}
    rate = 1.0 / (fixed + sum(seconds[n][at[d]] for n, d in chosen.items()))
    macs = sum(by[n].macs * d for n, d in chosen.items())
    return dataclasses.replace(cfg, densities=chosen), DensityChoice(
        chosen, {n: tuple(float(v) for v in sens[n]) for n in sens}, tuple(grid), int(round(macs)), 0, rate, fps)


def _sensitivities(model: nn.Module, x: torch.Tensor, cfg: FbsConfig,
                   grid: Sequence[float]) -> tuple[dict[str, tuple[float, ...]], list[LayerSpec]]:
    """Every gated layer's sensitivity at every density of ``grid`` (:func:`density_sensitivity`; the dense
    ``model`` converted at density 1 with a fixed ``k``, predictors fitted on ``x``) and the model's layer specs."""
    from mixq.graph.capture import capture

    shape = tuple(int(v) for v in x.shape[1:])
    fbs = fit_predictors(to_fbs(model, dataclasses.replace(cfg, density=1.0, densities={}, adaptive=False),
                                shape), x)
    return density_sensitivity(fbs, model, x, grid), capture(model, shape)


def budget_config(model: nn.Module, x: torch.Tensor, budget: float, cfg: FbsConfig,
                  grid: Sequence[float] = DENSITIES) -> tuple[FbsConfig, DensityChoice]:
    """``cfg`` with per-layer densities chosen for ``budget`` (a fraction of the gated layers' dense MACs) on
    the calibration images ``x``: the dense ``model`` converted at density 1, predictors fitted, every layer's
    sensitivity measured at every density of ``grid``, the knapsack solved."""
    sens, specs = _sensitivities(model, x, cfg, grid)
    choice = choose_densities(sens, specs, budget, grid)
    return dataclasses.replace(cfg, densities=choice.densities), choice
