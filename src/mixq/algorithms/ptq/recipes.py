"""Named post-training quantization recipes and the one call that runs them.

    qmodel = quantize(model, plan, calib, recipe="dfq")

A :class:`Recipe` is a frozen description of the pipeline::

    [synthesize inputs from BN statistics] → fold BN → [CLE (+ high-bias absorption)]
      → [residual-stream equalization] → assign MSQ rows still unassigned → swap layers
      → [output-aware weight scales] → calibrate activations → [output-aware activation ranges]
      → [AdaRound | GPTQ] → [bias correction] → [restore channel statistics]

Named recipes (:data:`RECIPES`):

* ``minmax``   fold, swap, [output-aware weight scales below 8 bits], calibrate. At 8-bit weights
  it is what :func:`mixq.api.quantize` does; layers with narrower weights get output-aware scales
  (``weight_scales="auto"``, :data:`AUTO_SCALES_MAX_BITS`): at W4A8 round-to-nearest the plan's
  weight observer alone loses to it on both benchmark models (MobileNetV2 40.4% -> 74.2% top-1
  agreement with FP32, CNV 98.69% -> 99.12%), and lost to Brevitas on CNV (MSE scales both).
* ``dfq``      + cross-layer equalization and analytic (data-free) bias correction (Nagel et
  al., 2019), with three measured extensions: CLE balances each pair's activation too
  (the side divided by ``s`` has the range ``r1^(1-w) · a^w`` of the first layer's rows ``r1``
  and the activation's channels ``a``; DFQ's rule is ``w = 0``; ``cle_act_weight="auto"``: 0.25
  beside per-tensor first layers, 0.5 beside per-channel ones, :data:`AUTO_ACT_WEIGHT`), and
  the residual streams CLE cannot reach are equalized on the calibration data
  (:mod:`~mixq.algorithms.ptq.streams`). MobileNetV2 W8A8 per-tensor + CLE + empirical BC:
  89.2% / 14.6 dB top-1 agreement / logit SQNR with DFQ's rule, 90.0% / 15.3 dB with the
  streams, 92.5% / 16.8 dB with both at ``w = 0.5``; and each input quantizer's range is tuned on
  the layer's output error (``act_ranges="output"``, :mod:`~mixq.algorithms.ptq.act_ranges`;
  logit SQNR 16.8 -> 19.0 dB with ``cle_act_weight="auto"``). DFQ's high-bias absorption is
  available (``absorb_bias=True``) but off: its "pre-activations stay above μ - 3σ" assumption
  fails often enough on the torchvision MobileNetV2 that it costs fidelity (93.3 % vs 95.0 %
  top-1 agreement with FP32 at W8A8 per-tensor, 120 inputs).
* ``dfq_empirical``  the same with bias correction measured on the calibration data.
* ``adaround`` + AdaRound of every layer, starting from output-aware weight scales
  (``weight_scales="output"``); no bias correction after it (measured to hurt; add it with
  ``bias_correction="empirical"``).
* ``gptq``     + GPTQ rounding of every layer (:mod:`~mixq.algorithms.ptq.gptq`: exact output-error
  Hessian, any row grid; for MSQ plans it also chooses each row's
  format on that error with ``msq_rows="output"`` (same count) or ``"output_auto"`` (free)), starting
  from output-aware weight scales; no bias correction.
* ``datafree`` inputs synthesized from the BN statistics (ZeroQ) stand in for calibration
  data; analytic bias correction.

Any field can be overridden per call: ``quantize(..., recipe="dfq", relu6="relu")``.

Progress (:mod:`mixq.progress`): every stage is reported as ``ptq <stage>`` (the keys of
:attr:`PTQResult.timings`): a task advancing per layer (``weight_scales``, ``act_ranges``,
``adaround``, ``gptq``, network / analytic ``bias_correction``, ``restore_stats``), per batch
(``calibrate``, per-layer ``bias_correction``), per sweep (``cle``) or per group (``synthesize``);
the quick stages (``fold_bn``, ``streams``, ``msq_rows``, ``swap``) as one line each, plus a
``ptq`` line when the recipe starts and ``ptq finished`` at the end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.msq import assign_rows
from mixq.algorithms.ptq._common import as_tensor, input_channel_ranges, require_positive, run_hooked
from mixq.algorithms.ptq.act_ranges import output_aware_act_ranges
from mixq.algorithms.ptq.adaround import AdaRoundConfig, adaround
from mixq.algorithms.ptq.bias_correction import (
    analytic_bias_correction,
    empirical_bias_correction,
    expected_input_means,
)
from mixq.algorithms.ptq.bn_reestimate import restore_channel_stats
from mixq.algorithms.ptq.calibrate import calibrate_activations
from mixq.algorithms.ptq.cle import (
    ChannelStats,
    absorb_high_bias,
    bn_output_stats,
    cross_layer_equalize,
    find_pairs,
)
from mixq.algorithms.ptq.datafree import DataFreeConfig, synthesize_inputs
from mixq.algorithms.ptq.gptq import GPTQConfig, gptq
from mixq.algorithms.ptq.scales import output_aware_weight_scales
from mixq.algorithms.ptq.streams import equalize_streams
from mixq.errors import DataError, MixqError
from mixq.graph import fold_bn
from mixq.graph.convert import to_quantized
from mixq.modes import eval_mode
from mixq.plan import QuantPlan

RECIPE_VERSION = 1
# stages of quantize_report without a progress task of their own: one line each when done
QUICK_STAGES = ("fold_bn", "streams", "msq_rows", "swap")
BIAS_CORRECTIONS = ("none", "empirical", "network", "analytic")
# the string fields of a Recipe and the values each may take
CHOICES: dict[str, tuple[str, ...]] = {
    "bias_correction": BIAS_CORRECTIONS,
    "weight_scales": ("plan", "output", "auto"),
    "act_ranges": ("observer", "output"),
    "msq_rows": ("plan", "output", "output_auto"),
    "relu6": ("clip", "relu", "keep"),
}


@dataclass(frozen=True)
class Recipe:
    """What a PTQ run does (see the module doc). ``relu6``: how CLE treats ReLU6 (``clip``, exact;
    ``relu``; ``keep``); ``stream_equalize``: rescale residual streams (``stream_alpha`` is
    SmoothQuant's migration strength); ``cle_act_weight``: how much CLE balances the activation
    between a pair (0: DFQ's weight-only rule; ``"auto"``: by the first layer's weight granularity,
    :data:`AUTO_ACT_WEIGHT`); ``weight_scales``: ``plan`` (the plan's weight
    observer), ``output`` (per-row scales searched on the output error,
    :mod:`~mixq.algorithms.ptq.scales`) or ``auto`` (``output`` on the layers whose weights are at most
    :data:`AUTO_SCALES_MAX_BITS` wide, ``plan`` on the others); ``msq_rows``: ``plan``
    keeps the MSQ rows assigned from the weights, ``output`` re-chooses them (same count per layer)
    on the output error, ``output_auto`` gives SP2 to exactly the rows whose output error is lower
    with it (count free) — with ``gptq`` the rows are chosen once more on GPTQ's exact error; ``act_ranges``:
    ``observer`` (the plan's activation observer) or ``output`` (each input quantizer's clipping
    tuned on the layer's output error, :mod:`~mixq.algorithms.ptq.act_ranges`);
    ``bias_correction``: ``none``, ``empirical`` (per layer, ``bias_passes`` passes), ``network``
    (layer by layer against the float model) or ``analytic`` (from BN statistics)."""

    name: str = "custom"
    cle: bool = False
    cle_iterations: int = 20
    cle_act_weight: float | str = 0.0
    relu6: str = "clip"
    absorb_bias: bool = False
    absorb_std: float = 3.0
    absorb_padded: bool = False
    stream_equalize: bool = False
    stream_alpha: float = 0.5
    weight_scales: str = "plan"
    msq_rows: str = "plan"
    act_ranges: str = "observer"
    bias_correction: str = "none"
    bias_passes: int = 1
    adaround: AdaRoundConfig | None = None
    gptq: GPTQConfig | None = None
    restore_stats: bool = False
    datafree: DataFreeConfig | None = None
    batch_size: int = 8
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise MixqError(f"recipe.{name}: {getattr(self, name)!r} is not one of {', '.join(choices)}")
        if self.adaround is not None and self.gptq is not None:
            raise MixqError("recipe.adaround / recipe.gptq: choose one rounding method, not both")
        if self.msq_rows != "plan" and self.weight_scales == "plan":
            raise MixqError(f"recipe.msq_rows: {self.msq_rows!r} needs weight_scales='output' or 'auto'")
        if isinstance(self.cle_act_weight, str) and self.cle_act_weight != "auto":
            raise MixqError(f"recipe.cle_act_weight: {self.cle_act_weight!r} is neither 'auto' nor a number in [0, 1]")
        for name in ("cle_act_weight", "stream_alpha"):
            v = getattr(self, name)
            if not isinstance(v, str) and not 0.0 <= v <= 1.0:
                raise MixqError(f"recipe.{name}: must be in [0, 1], got {v}")
        require_positive(self, "recipe", ("batch_size", "cle_iterations", "bias_passes"))
        if self.version != RECIPE_VERSION:
            raise MixqError(f"recipe.version: {self.version} is not supported (this mixq reads {RECIPE_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    "minmax": Recipe(name="minmax", weight_scales="auto"),
    # the dfq recipes tune the activation ranges on the output error (act_ranges="output"): MobileNetV2 W8A8
    # CLE + BC per-tensor 94.17% / 16.84 dB -> 94.17% / 19.03 dB, per-channel 92.92% / 17.69 dB -> 95.42% /
    # 20.04 dB; CNV per-tensor 99.71% / 36.56 dB -> 99.71% / 38.14 dB
    "dfq": Recipe(name="dfq", cle=True, cle_act_weight="auto", stream_equalize=True, weight_scales="auto",
                  act_ranges="output", bias_correction="analytic"),
    "dfq_empirical": Recipe(name="dfq_empirical", cle=True, cle_act_weight="auto", stream_equalize=True,
                            weight_scales="auto", act_ranges="output", bias_correction="empirical"),
    # no bias correction after AdaRound: its reconstruction already fits each layer's output, and
    # correcting on top measured worse (MobileNetV2 W4A8: 80.4% -> 69.2% agreement; CNV: 33.5 -> 32.7 dB)
    # AdaRound starts from output-aware scales (MobileNetV2 W4A8: 80.4% / 7.65 dB -> 82.5% / 7.89 dB; CNV equal)
    "adaround": Recipe(name="adaround", weight_scales="output", adaround=AdaRoundConfig(), bias_correction="none"),
    "gptq": Recipe(name="gptq", weight_scales="output", gptq=GPTQConfig(), bias_correction="none"),
    "datafree": Recipe(name="datafree", datafree=DataFreeConfig(), bias_correction="analytic"),
}


# ``weight_scales="auto"``: the widest weights that still get output-aware scales. 8-bit rows keep the
# plan's (min-max) scales, where the search measured no better (W8A8 per-channel: MobileNetV2 92.92% /
# 15.23 dB vs 91.67% / 15.16 dB, CNV 99.79% / 36.46 dB vs 99.74% / 37.44 dB) and costs a pass.
AUTO_SCALES_MAX_BITS = 7

# how GPTQ treats MSQ rows, by the recipe's ``msq_rows`` (the exact-error version of the same choice)
GPTQ_ROWS = {"plan": "plan", "output": "count", "output_auto": "auto"}

# ``cle_act_weight="auto"``: the activation's share of a CLE pair's balance by the first layer's
# weight granularity. A per-channel (or grouped) first layer does not care how its rows are scaled,
# so the activation can take more of the balance than beside per-tensor rows. Measured on MobileNetV2
# W8A8 + CLE + empirical BC + output-aware activation ranges, logit SQNR on the 240 fidelity inputs /
# 220 held-out crops: per-tensor 0.25 -> 19.04 / 18.90 dB, 0.375 -> 18.86 / 18.76, 0.5 -> 18.31 /
# 18.29; per-channel 0.25 -> 19.98 / 19.85, 0.5 -> 20.13 / 20.06, 0.75 -> 20.29 / 20.09.
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


def get_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    """A named recipe (or the given one) with ``overrides`` applied."""
    if isinstance(recipe, Recipe):
        base = recipe
    elif recipe in RECIPES:
        base = RECIPES[recipe]
    else:
        raise MixqError(f"recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    try:
        return dataclasses.replace(base, **overrides) if overrides else base
    except TypeError as exc:
        raise MixqError(f"recipe: {exc}") from None


@dataclass
class PTQResult:
    """What :func:`quantize_report` returns: the quantized model, the plan it applied (MSQ rows
    filled in), the recipe, seconds per stage and per-stage details."""

    model: nn.Module
    plan: QuantPlan
    recipe: Recipe
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())


@torch.no_grad()
def measured_output_stats(model: nn.Module, calib: torch.Tensor, batch_size: int = 32) -> dict[str, ChannelStats]:
    """Per-channel mean and std of every Conv/Linear output of ``model`` on ``calib`` (for bias absorption
    when there are no BN statistics)."""
    from mixq.algorithms.ptq._common import channel_moments

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


def quantize_report(model: nn.Module, plan: QuantPlan, calib: torch.Tensor | Iterable[torch.Tensor] | None = None,
                    recipe: str | Recipe = "minmax", *, input_shape: tuple[int, ...] | None = None,
                    **overrides: Any) -> PTQResult:
    """Run a PTQ recipe (see the module doc); the input model is not changed."""
    r = get_recipe(recipe, **overrides)
    timings: dict[str, float] = {}
    details: dict[str, Any] = {}
    t = time.perf_counter()

    def lap(stage: str, **info: Any) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - t
        t = now
        if stage in QUICK_STAGES:
            progress.log(f"ptq {stage}", **info, seconds=round(timings[stage], 3))

    data = as_tensor(calib) if calib is not None else None
    if input_shape is None:
        if data is None:
            raise DataError("quantize: give calibration data or input_shape")
        input_shape = tuple(int(s) for s in data.shape[1:])
    progress.log("ptq", recipe=r.name, model=plan.model, layers=len(plan.layers))
    with eval_mode(model):
        if r.datafree is not None:
            data, details["datafree"] = synthesize_inputs(model, input_shape, r.datafree)
            lap("synthesize")
        if data is None:
            raise DataError(f"quantize: recipe {r.name!r} needs calibration data")
        need_stats = r.absorb_bias or r.bias_correction == "analytic"
        stats = bn_output_stats(model, input_shape) if need_stats else {}
        fm = fold_bn(model, input_shape).eval()
        lap("fold_bn", model=type(model).__name__)
    if r.cle:
        pairs = find_pairs(fm, input_shape)
        act_weight = pair_act_weights(r, plan, [p.first for p in pairs])
        aware = any(act_weight.values()) if isinstance(act_weight, dict) else act_weight > 0
        ranges = input_channel_ranges(fm, [p.second for p in pairs], data, r.batch_size) if aware else None
        fm, stats, pairs = cross_layer_equalize(fm, input_shape, iterations=r.cle_iterations, relu6=r.relu6,
                                                stats=stats, pairs=pairs, act_ranges=ranges, act_weight=act_weight)
        details["cle_pairs"] = len(pairs)
        if r.absorb_bias:
            if not stats:
                stats = measured_output_stats(fm, data, r.batch_size)
            fm, stats, absorbed = absorb_high_bias(fm, pairs, stats, n_std=r.absorb_std, padded=r.absorb_padded)
            details["absorbed_layers"] = len(absorbed)
        lap("cle")
    if r.stream_equalize:
        fm, stats, scales = equalize_streams(fm, input_shape, data, alpha=r.stream_alpha, stats=stats,
                                             batch_size=r.batch_size)
        details["streams"] = len(scales)
        lap("streams", streams=len(scales))
    if any(lp.weight_alt is not None and lp.alt_rows is None for _, lp in plan.items()):
        plan = assign_rows(fm, plan, fold=False)
        lap("msq_rows", layers=sum(lp.weight_alt is not None for _, lp in plan.items()))
    q = to_quantized(fm, plan, sample=data[:2] if isinstance(data, torch.Tensor) else None)
    lap("swap", layers=len(plan.layers))
    if r.weight_scales != "plan":
        max_bits = AUTO_SCALES_MAX_BITS if r.weight_scales == "auto" else None
        details["weight_scales"] = output_aware_weight_scales(q, data, batch_size=r.batch_size,
                                                              rows=r.msq_rows != "plan",
                                                              keep_count=r.msq_rows == "output", max_bits=max_bits)
        plan = _with_rows(plan, q, details["weight_scales"], free=r.msq_rows == "output_auto")
        lap("weight_scales")
    calibrate_activations(q, data, r.batch_size)
    lap("calibrate")
    if r.act_ranges == "output":
        details["act_ranges"] = output_aware_act_ranges(q, data, batch_size=r.batch_size)
        lap("act_ranges")
    if r.adaround is not None:
        details["adaround"] = adaround(q, fm, data, dataclasses.replace(r.adaround, batch_size=r.batch_size))
        lap("adaround")
    if r.gptq is not None:
        details["gptq"] = gptq(q, data, dataclasses.replace(r.gptq, batch_size=r.batch_size),
                               rows=GPTQ_ROWS[r.msq_rows], fmodel=fm)
        plan = _with_rows(plan, q, details["gptq"], free=r.msq_rows == "output_auto")
        lap("gptq")
    if r.bias_correction in ("empirical", "network"):
        details["bias_correction"] = empirical_bias_correction(q, data, fm, mode="layer" if r.bias_correction ==
                                                               "empirical" else "network", batch_size=r.batch_size,
                                                               passes=r.bias_passes)
        lap("bias_correction")
    elif r.bias_correction == "analytic":
        means = expected_input_means(fm, input_shape, stats)
        details["bias_correction"] = analytic_bias_correction(q, means, fm)
        lap("bias_correction")
    if r.restore_stats:
        details["restore_stats"] = restore_channel_stats(q, fm, data, batch_size=r.batch_size)
        lap("restore_stats")
    q.eval()
    progress.log("ptq finished", recipe=r.name, seconds=round(sum(timings.values()), 2))
    return PTQResult(model=q, plan=plan, recipe=r, timings=timings, details=details)


def _with_rows(plan: QuantPlan, q: nn.Module, report: dict[str, dict[str, Any]], free: bool) -> QuantPlan:
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


def quantize(model: nn.Module, plan: QuantPlan, calib: torch.Tensor | Iterable[torch.Tensor] | None = None,
             recipe: str | Recipe = "minmax", *, input_shape: tuple[int, ...] | None = None,
             **overrides: Any) -> nn.Module:
    """Post-training quantization of ``model`` under ``plan`` with a named recipe (or a :class:`Recipe`);
    returns the fake-quantized model (eval mode). See :func:`quantize_report` for timings and details."""
    return quantize_report(model, plan, calib, recipe, input_shape=input_shape, **overrides).model
