"""PTQ as stages: one state, one contract, one ordered table.

Every algorithm of a recipe is a :class:`Stage`: a function ``PTQState -> PTQState`` and the rule that
says whether a :class:`~mixq.algorithms.ptq.recipes.Recipe` runs it. :data:`PIPELINE` is the one
order; :func:`~mixq.algorithms.ptq.recipes.quantize_report` is a loop over it. Optional stages live
in :data:`EXTRA_STAGES` and run when a recipe names them in ``Recipe.stages`` (at the position their
``before`` names), so a new algorithm is one file (its ``apply``), one line here and one test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mixq.algorithms.msq import assign_rows
from mixq.algorithms.ptq import bias_fit, dw_act, first_act, percentile
from mixq.algorithms.ptq._common import channel_moments, input_channel_ranges, run_hooked
from mixq.algorithms.ptq.act_ranges import output_aware_act_ranges
from mixq.algorithms.ptq.adaround import adaround
from mixq.algorithms.ptq.bias_correction import (
    analytic_bias_correction,
    empirical_bias_correction,
    expected_input_means,
)
from mixq.algorithms.ptq.bn_reestimate import restore_channel_stats
from mixq.algorithms.ptq.brecq import brecq
from mixq.algorithms.ptq.calibrate import calibrate_activations
from mixq.algorithms.ptq.cle import ChannelStats, absorb_high_bias, bn_output_stats, cross_layer_equalize, find_pairs
from mixq.algorithms.ptq.datafree import synthesize_inputs
from mixq.algorithms.ptq.distill import distill
from mixq.algorithms.ptq.gptq import gptq
from mixq.algorithms.ptq.scales import output_aware_weight_scales
from mixq.algorithms.ptq.streams import equalize_streams, rotate_streams
from mixq.errors import DataError
from mixq.graph import fold_bn
from mixq.graph.convert import to_quantized
from mixq.graph.normalize import normalize
from mixq.graph.residual import tie_residual_scales
from mixq.nn import float_weights
from mixq.plan import QuantPlan

if TYPE_CHECKING:
    from mixq.algorithms.ptq.recipes import Recipe


# ``weight_scales="auto"``: the widest weights that still get output-aware scales; 8-bit rows keep the
# plan's (min-max) scales, where the search measured no better and costs a pass
# (benchmarks/results/design_measurements.md, "PTQ recipes").
AUTO_SCALES_MAX_BITS = 7

# how GPTQ treats MSQ rows, by the recipe's ``msq_rows`` (the exact-error version of the same choice)
GPTQ_ROWS = {"plan": "plan", "output": "count", "output_auto": "auto"}

# ``cle_act_weight="auto"``: the activation's share of a CLE pair's balance by the first layer's
# weight granularity. A per-channel (or grouped) first layer does not care how its rows are scaled,
# so the activation can take more of the balance than beside per-tensor rows (the sweep behind the
# values: benchmarks/results/design_measurements.md, "PTQ recipes").
AUTO_ACT_WEIGHT = {"tensor": 0.25, "channel": 0.5, "group": 0.5}


def pair_act_weights(recipe: Recipe, plan: QuantPlan, firsts: Iterable[str]) -> float | dict[str, float]:
    """The activation weight CLE gives each pair (keyed by its first layer): the recipe's number, or
    with ``"auto"`` :data:`AUTO_ACT_WEIGHT` by the first layer's planned weight granularity (layers
    the plan keeps in float count as per-channel)."""
    if not isinstance(recipe.cle_act_weight, str):
        return float(recipe.cle_act_weight)
    out = {}
    for n in firsts:
        lp = plan.layers.get(n)
        out[n] = AUTO_ACT_WEIGHT[lp.weight_granularity if lp is not None and lp.weight is not None else "channel"]
    return out


@torch.no_grad()
def measured_output_stats(model: nn.Module, calib: torch.Tensor, batch_size: int = 32) -> dict[str, ChannelStats]:
    """Per-channel mean and std of every Conv/Linear output of ``model`` on ``calib`` (for bias absorption
    when there are no BN statistics)."""
    acc: dict[str, list[Any]] = {}

    def hook_for(n: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: object, y: torch.Tensor) -> None:
            s, s2, k = channel_moments(y)
            a = acc.setdefault(n, [0, 0, 0])
            a[0], a[1], a[2] = a[0] + s, a[1] + s2, a[2] + k
        return hook

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    run_hooked(model, {n: hook_for(n) for n in names}, calib, batch_size)
    out = {}
    for n, (s, s2, k) in acc.items():
        mean = s / k
        out[n] = ChannelStats(mean.float(), (s2 / k - mean * mean).clamp(min=0).sqrt().float())
    return out


@dataclass
class PTQState:
    """What the stages of one PTQ run share: the caller's float model (never changed), the plan (MSQ
    rows filled in as stages choose them), the recipe, the calibration data, the folded float model
    ``fm``, the quantized model ``q``, per-channel statistics, the CLE pairs and each stage's details."""

    model: nn.Module
    plan: QuantPlan
    recipe: Recipe
    input_shape: tuple[int, ...]
    data: torch.Tensor | None = None
    fm: nn.Module | None = None
    q: nn.Module | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    fold: bool = True  # False: the model's BatchNorms are already folded (fold_bn is skipped)
    allow_float: bool | Iterable[str] = False  # compute layers the caller accepts in float (to_quantized)

    @property
    def calib(self) -> torch.Tensor:
        if self.data is None:
            raise DataError(f"quantize: recipe {self.recipe.name!r} needs calibration data")
        return self.data

    @property
    def folded(self) -> nn.Module:
        assert self.fm is not None, "stage order: fold_bn runs first"
        return self.fm

    @property
    def quantized(self) -> nn.Module:
        assert self.q is not None, "stage order: swap runs before this stage"
        return self.q


@dataclass(frozen=True)
class Stage:
    """One PTQ algorithm: ``run`` transforms the state; ``when`` says whether a recipe runs it on a plan; a
    quick stage, with no progress task of its own, has ``line``: the fields of the one progress line it
    reports when done. An extra stage runs ``before`` the named stage of :data:`PIPELINE` when a recipe
    lists it in ``Recipe.stages``."""

    name: str
    run: Callable[[PTQState], PTQState]
    when: Callable[[Recipe, QuantPlan], bool] = lambda r, p: True
    line: Callable[[PTQState], dict[str, Any]] | None = None
    before: str = ""


def _synthesize(s: PTQState) -> PTQState:
    assert s.recipe.datafree is not None
    s.data, s.details["datafree"] = synthesize_inputs(s.model, s.input_shape, s.recipe.datafree)
    return s


def _fold(s: PTQState) -> PTQState:
    r = s.recipe
    s.calib  # noqa: B018 - every later stage needs data: refuse now, before any work
    model = normalize(s.model, s.input_shape)  # Conv1d / ConvTranspose2d as the 2-D convolutions mixq runs
    if r.absorb_bias or r.bias_correction == "analytic":
        s.stats = bn_output_stats(model, s.input_shape)
    s.fm = (fold_bn(model, s.input_shape) if s.fold else model).eval()
    return s


def _cle(s: PTQState) -> PTQState:
    r = s.recipe
    pairs = find_pairs(s.folded, s.input_shape)
    act_weight = pair_act_weights(r, s.plan, [p.first for p in pairs])
    aware = any(act_weight.values()) if isinstance(act_weight, dict) else act_weight > 0
    ranges = input_channel_ranges(s.folded, [p.second for p in pairs], s.calib, r.batch_size) if aware else None
    s.fm, s.stats, pairs = cross_layer_equalize(s.folded, s.input_shape, iterations=r.cle_iterations, relu6=r.relu6,
                                                stats=s.stats, pairs=pairs, act_ranges=ranges, act_weight=act_weight)
    s.details["cle_pairs"] = len(pairs)
    if r.absorb_bias:
        if not s.stats:
            s.stats = measured_output_stats(s.folded, s.calib, r.batch_size)
        s.fm, s.stats, absorbed = absorb_high_bias(s.folded, pairs, s.stats, n_std=r.absorb_std,
                                                   padded=r.absorb_padded)
        s.details["absorbed_layers"] = len(absorbed)
    return s


def _streams(s: PTQState) -> PTQState:
    s.fm, s.stats, scales = equalize_streams(s.folded, s.input_shape, s.calib, alpha=s.recipe.stream_alpha,
                                             stats=s.stats, batch_size=s.recipe.batch_size)
    s.details["streams"] = len(scales)
    return s


def _rotate(s: PTQState) -> PTQState:
    seed = s.recipe.stream_rotate
    assert seed is not None
    s.fm, streams = rotate_streams(s.folded, s.input_shape, seed=seed)
    for st in streams:  # the producers' output statistics no longer hold channel by channel
        for p in st.producers:
            s.stats.pop(p, None)
    s.details["rotated_streams"] = len(streams)
    return s


def _unassigned_rows(plan: QuantPlan) -> bool:
    return any(lp.weight_alt is not None and lp.alt_rows is None for _, lp in plan.items())


def _msq_rows(s: PTQState) -> PTQState:
    s.plan = assign_rows(s.folded, s.plan, fold=False)
    return s


def _swap(s: PTQState) -> PTQState:
    s.q = to_quantized(s.folded, s.plan, sample=s.calib[:2], allow_float=s.allow_float)
    return s


def with_rows(plan: QuantPlan, q: nn.Module, report: dict[str, dict[str, Any]], free: bool) -> QuantPlan:
    """``plan`` with the MSQ rows a stage re-chose (``report[layer]["alt_rows"]``); with ``free`` the
    count changed too, so ``alt_ratio`` becomes the real fraction."""
    for n, rep in report.items():
        if "alt_rows" in rep:
            rows = tuple(rep["alt_rows"])
            weight: Any = q.get_submodule(n).weight
            total = int(weight.shape[0])
            ratio = len(rows) / max(total, 1) if free else plan[n].alt_ratio
            plan = plan.with_layer(n, plan[n].with_(alt_rows=rows, alt_ratio=ratio))
    return plan


def _weight_scales(s: PTQState) -> PTQState:
    r = s.recipe
    max_bits = AUTO_SCALES_MAX_BITS if r.weight_scales == "auto" else None
    rep = output_aware_weight_scales(s.quantized, s.calib, batch_size=r.batch_size, rows=r.msq_rows != "plan",
                                     keep_count=r.msq_rows == "output", max_bits=max_bits)
    s.details["weight_scales"] = rep
    s.plan = with_rows(s.plan, s.quantized, rep, free=r.msq_rows == "output_auto")
    return s


def _ranges_view(s: PTQState) -> AbstractContextManager[Any]:
    """What the activation-range stages see: the float network (``act_calibration='float'``) or the
    network with its weights at nearest rounding."""
    return float_weights(s.quantized) if s.recipe.act_calibration == "float" else nullcontext()


def _calibrate(s: PTQState) -> PTQState:
    with _ranges_view(s):
        calibrate_activations(s.quantized, s.calib, s.recipe.batch_size)
    return s


def _act_ranges(s: PTQState) -> PTQState:
    with _ranges_view(s):
        s.details["act_ranges"] = output_aware_act_ranges(s.quantized, s.calib, batch_size=s.recipe.batch_size)
    return s


def _residual_tie(s: PTQState) -> PTQState:
    s.details["residual_tie"] = tie_residual_scales(s.quantized)
    return s


def _adaround(s: PTQState) -> PTQState:
    assert s.recipe.adaround is not None
    cfg = dataclasses.replace(s.recipe.adaround, batch_size=s.recipe.batch_size)
    s.details["adaround"] = adaround(s.quantized, s.folded, s.calib, cfg)
    return s


def _gptq(s: PTQState) -> PTQState:
    r = s.recipe
    assert r.gptq is not None
    # a following BRECQ learns the rounding from GPTQ's compensated weights
    rep = gptq(s.quantized, s.calib, dataclasses.replace(r.gptq, batch_size=r.batch_size,
                                                         continuous=r.gptq.continuous or r.brecq is not None),
               rows=GPTQ_ROWS[r.msq_rows], fmodel=s.folded)
    s.details["gptq"] = rep
    s.plan = with_rows(s.plan, s.quantized, rep, free=r.msq_rows == "output_auto")
    return s


def _brecq(s: PTQState) -> PTQState:
    r = s.recipe
    assert r.brecq is not None
    # free MSQ rows (msq_rows="output_auto") are chosen once more, inside each block on its output error
    cfg = dataclasses.replace(r.brecq, msq_rows="block") if r.msq_rows == "output_auto" else r.brecq
    s.details["brecq"] = brecq(s.quantized, s.calib, cfg, fmodel=s.folded)
    if cfg.msq_rows == "block":
        rows = {n: {"alt_rows": tuple(int(i) for i in (m.row_scheme == 1).nonzero().flatten().tolist())}
                for n, m in s.quantized.named_modules() if n in s.plan.layers and len(getattr(m, "formats", ())) == 2}
        s.plan = with_rows(s.plan, s.quantized, rows, free=True)
    return s


def _distill(s: PTQState) -> PTQState:
    assert s.recipe.distill is not None
    s.details["distill"] = distill(s.quantized, s.folded, s.calib, s.recipe.distill)
    return s


def _bias_correction(s: PTQState) -> PTQState:
    r = s.recipe
    if r.bias_correction == "analytic":
        means = expected_input_means(s.folded, s.input_shape, s.stats)
        s.details["bias_correction"] = analytic_bias_correction(s.quantized, means, s.folded)
    else:
        s.details["bias_correction"] = empirical_bias_correction(
            s.quantized, s.calib, s.folded, mode="layer" if r.bias_correction == "empirical" else "network",
            batch_size=r.batch_size, passes=r.bias_passes)
    return s


def _restore_stats(s: PTQState) -> PTQState:
    s.details["restore_stats"] = restore_channel_stats(s.quantized, s.folded, s.calib,
                                                       batch_size=s.recipe.batch_size)
    return s


#: The one order of a PTQ run; each recipe runs the stages its fields switch on.
PIPELINE: tuple[Stage, ...] = (
    Stage("synthesize", _synthesize, lambda r, p: r.datafree is not None),
    Stage("fold_bn", _fold, line=lambda s: {"model": type(s.model).__name__}),
    Stage("cle", _cle, lambda r, p: r.cle),
    Stage("streams", _streams, lambda r, p: r.stream_equalize, line=lambda s: {"streams": s.details["streams"]}),
    Stage("rotate", _rotate, lambda r, p: r.stream_rotate is not None,
          line=lambda s: {"streams": s.details["rotated_streams"]}),
    Stage("msq_rows", _msq_rows, lambda r, p: _unassigned_rows(p),
          line=lambda s: {"layers": sum(lp.weight_alt is not None for _, lp in s.plan.items())}),
    Stage("swap", _swap, line=lambda s: {"layers": len(s.plan.layers)}),
    Stage("weight_scales", _weight_scales, lambda r, p: r.weight_scales != "plan"),
    Stage("calibrate", _calibrate),
    Stage("act_ranges", _act_ranges, lambda r, p: r.act_ranges == "output"),
    Stage("residual_tie", _residual_tie, lambda r, p: p.residual_bits is not None,
          line=lambda s: {"streams": s.details["residual_tie"]}),
    Stage("adaround", _adaround, lambda r, p: r.adaround is not None),
    Stage("gptq", _gptq, lambda r, p: r.gptq is not None),
    Stage("brecq", _brecq, lambda r, p: r.brecq is not None),
    Stage("distill", _distill, lambda r, p: r.distill is not None),
    Stage("bias_correction", _bias_correction, lambda r, p: r.bias_correction != "none"),
    Stage("restore_stats", _restore_stats, lambda r, p: r.restore_stats),
    Stage("bias_fit", bias_fit.apply, line=lambda s: {"layers": len(s.details["bias_fit"])}),
)

#: Optional stages a recipe switches on by name (``Recipe.stages``); one line per algorithm.
EXTRA_STAGES: dict[str, Stage] = {
    "act_percentile": Stage("act_percentile", percentile.apply, before="calibrate"),
    "first_act_8bit": Stage("first_act_8bit", first_act.apply, before="swap"),
    "dw_act_equalize": Stage("dw_act_equalize", dw_act.apply, before="msq_rows"),
    "dw_act_clip": Stage("dw_act_clip", dw_act.apply_clip, before="swap"),
}


def stages_of(recipe: Recipe, plan: QuantPlan) -> list[Stage]:
    """The stages ``recipe`` runs on ``plan``, in order."""
    extra = [st for n, st in EXTRA_STAGES.items() if n in recipe.stages]  # the registry's order, not the caller's
    out: list[Stage] = []
    for st in PIPELINE:
        out += [e for e in extra if e.before == st.name]
        if st.when(recipe, plan):
            out.append(st)
    return out
