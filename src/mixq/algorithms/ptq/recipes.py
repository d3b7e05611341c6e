"""Named post-training quantization recipes and the one verb that runs them.

    qmodel = quantize(model, plan, calib, recipe="dfq")      # also mixq.quantize / mixq.api.quantize

A :class:`Recipe` is a frozen description of which stages of the one pipeline run
(:mod:`~mixq.algorithms.ptq.pipeline`: each stage ``PTQState -> PTQState``)::

    [synthesize inputs from BN statistics] → fold BN → [CLE (+ high-bias absorption)]
      → [residual-stream equalization] → assign MSQ rows still unassigned → swap layers
      → [output-aware weight scales] → [extra stages, e.g. act_percentile] → calibrate activations
      → [output-aware activation ranges] → [AdaRound | GPTQ | BRECQ] → [bias correction] → [restore channel statistics]

:func:`quantize_report` is a loop over those stages. Named recipes (:data:`RECIPES`):

* ``plan``     the plan as written: fold, swap, calibrate with the plan's observers (the default of
  :func:`quantize` and :func:`mixq.api.quantize`).
* ``minmax``   fold, swap, [output-aware weight scales below 8 bits], calibrate. At 8-bit weights it
  is ``plan``; layers with narrower weights get output-aware scales (``weight_scales="auto"``,
  ``AUTO_SCALES_MAX_BITS``), which beat the plan's weight observer alone on both benchmark models at
  W4A8 (benchmarks/results/design_measurements.md, "PTQ recipes").
* ``minmax_pct`` ``minmax`` with percentile activation clipping (the ``act_percentile`` stage,
  :mod:`~mixq.algorithms.ptq.percentile`; benchmarks/results/ptq_percentile.md).
* ``dfq``      + cross-layer equalization and analytic (data-free) bias correction (Nagel et
  al., 2019), with three measured extensions: CLE balances each pair's activation too
  (the side divided by ``s`` has the range ``r1^(1-w) · a^w`` of the first layer's rows ``r1``
  and the activation's channels ``a``; DFQ's rule is ``w = 0``; ``cle_act_weight="auto"``: by the
  first layer's weight granularity, ``AUTO_ACT_WEIGHT``), the residual streams CLE cannot reach are
  equalized on the calibration data (:mod:`~mixq.algorithms.ptq.streams`), and each input quantizer's
  range is tuned on the layer's output error (``act_ranges="output"``,
  :mod:`~mixq.algorithms.ptq.act_ranges`). DFQ's high-bias absorption is available
  (``absorb_bias=True``) but off: its "pre-activations stay above μ - 3σ" assumption fails often
  enough on the torchvision MobileNetV2 that it costs fidelity. The figures behind each choice:
  design_measurements.md, "PTQ recipes".
* ``dfq_empirical``  the same with bias correction measured on the calibration data.
* ``adaround`` + AdaRound of every layer, starting from output-aware weight scales
  (``weight_scales="output"``); no bias correction after it (measured to hurt; add it with
  ``bias_correction="empirical"``).
* ``gptq``     + GPTQ rounding of every layer (:mod:`~mixq.algorithms.ptq.gptq`: exact output-error
  Hessian, any row grid; for MSQ plans it also chooses each row's
  format on that error with ``msq_rows="output"`` (same count) or ``"output_auto"`` (free)), starting
  from output-aware weight scales; no bias correction.
* ``brecq``    + block reconstruction (:mod:`~mixq.algorithms.ptq.brecq`: BRECQ with QDrop; the rounding
  of every weight and the step of every activation quantizer of a block learned together on the
  block's output error, blocks found from the graph), from output-aware weight scales; no bias correction.
  With ``gptq`` set as well, GPTQ runs first and BRECQ starts from its rounding (GPTQ hands over its
  compensated weights, ``GPTQConfig.continuous``; BRECQ's target stays the float model).
* ``datafree`` inputs synthesized from the BN statistics (ZeroQ) stand in for calibration
  data; analytic bias correction.

Any recipe can end with network-wise distillation (``distill=DistillConfig()``, :mod:`~mixq.algorithms.ptq.distill`;
``mixq quantize --distill N``): after the rounding, the biases, a factor per weight row's scale and the activation
steps learned on the KL of the float network's prediction. It helps where the calibration images cover what the
network will see (CNV after GPTQ, agreement on the 10,000 test images: W4A4 96.38 -> 96.84%, W2A4 94.42 ->
95.07%); on MobileNetV2 with crops of 8 photos it fitted those photos and lost agreement on others
(benchmarks/results/ptq_mobilenetv2_lowbit.md).

Activation ranges are observed on the network with its weights at nearest rounding; a recipe that rounds the
weights afterwards (GPTQ, BRECQ, AdaRound) can observe the float network instead
(``act_calibration="float"``). It matters where nearest rounding is far from the final weights (MobileNetV2
W4A8 all-E2M1 with GPTQ); with 4-bit fixed point the two are within the calibration-draw spread
(benchmarks/results/ptq_mobilenetv2_lowbit.md).

Any field can be overridden per call: ``quantize(..., recipe="dfq", relu6="relu")``; extra stages by
name: ``quantize(..., recipe="dfq", stages=("act_percentile",))`` or ``stages=("first_act_8bit",)`` (the
first activation inside the network planned at 8 bits, :mod:`~mixq.algorithms.ptq.first_act`) or
``stages=("dw_act_equalize",)`` (every depthwise layer's input equalized per channel through the row
scales on both sides, :mod:`~mixq.algorithms.ptq.dw_act`) or ``stages=("dw_act_clip",)`` (the same with
per-channel clips searched on each depthwise output channel's error). Extra stages run in the order of
:data:`~mixq.algorithms.ptq.pipeline.EXTRA_STAGES`, whatever order they are named in; ``mixq quantize --stage``
names them from the command line.

Progress (:mod:`mixq.progress`): every stage is reported as ``ptq <stage>`` (the keys of
:attr:`PTQResult.timings`): a task advancing per layer (``weight_scales``, ``act_ranges``,
``adaround``, ``gptq``, ``brecq`` (per block), network / analytic ``bias_correction``, ``restore_stats``), per step
(``distill``), per batch
(``calibrate``, per-layer ``bias_correction``), per sweep (``cle``) or per group (``synthesize``);
the quick stages (``fold_bn``, ``streams``, ``msq_rows``, ``swap``) as one line each, plus a
``ptq`` line when the recipe starts and ``ptq finished`` at the end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.ptq._common import as_tensor, require_positive
from mixq.algorithms.ptq.adaround import AdaRoundConfig
from mixq.algorithms.ptq.brecq import BrecqConfig
from mixq.algorithms.ptq.datafree import DataFreeConfig
from mixq.algorithms.ptq.distill import DistillConfig
from mixq.algorithms.ptq.gptq import GPTQConfig
from mixq.algorithms.ptq.pipeline import (  # noqa: F401 - AUTO_*, GPTQ_ROWS, pair_act_weights: their old home
    AUTO_ACT_WEIGHT,
    AUTO_SCALES_MAX_BITS,
    EXTRA_STAGES,
    GPTQ_ROWS,
    PTQState,
    measured_output_stats,
    pair_act_weights,
    stages_of,
)
from mixq.errors import DataError, MixqError
from mixq.modes import eval_mode
from mixq.plan import QuantPlan

RECIPE_VERSION = 1
BIAS_CORRECTIONS = ("none", "empirical", "network", "analytic")
# the string fields of a Recipe and the values each may take
CHOICES: dict[str, tuple[str, ...]] = {
    "bias_correction": BIAS_CORRECTIONS,
    "weight_scales": ("plan", "output", "auto"),
    "act_ranges": ("observer", "output"),
    "act_calibration": ("quantized", "float"),
    "msq_rows": ("plan", "output", "output_auto"),
    "relu6": ("clip", "relu", "keep"),
}


@dataclass(frozen=True)
class Recipe:
    """What a PTQ run does (see the module doc). ``relu6``: how CLE treats ReLU6 (``clip``, exact;
    ``relu``; ``keep``); ``stream_equalize``: rescale residual streams (``stream_alpha`` is
    SmoothQuant's migration strength); ``stream_rotate``: rotate the channels of every stream a rotation
    keeps by a random orthogonal matrix drawn from this seed (``None``: no rotation;
    :func:`~mixq.algorithms.ptq.streams.rotate_streams`); ``cle_act_weight``: how much CLE balances the activation
    between a pair (0: DFQ's weight-only rule; ``"auto"``: by the first layer's weight granularity,
    :data:`AUTO_ACT_WEIGHT`); ``weight_scales``: ``plan`` (the plan's weight
    observer), ``output`` (per-row scales searched on the output error,
    :mod:`~mixq.algorithms.ptq.scales`) or ``auto`` (``output`` on the layers whose weights are at most
    :data:`AUTO_SCALES_MAX_BITS` wide, ``plan`` on the others); ``msq_rows``: ``plan``
    keeps the MSQ rows assigned from the weights, ``output`` re-chooses them (same count per layer)
    on the output error, ``output_auto`` gives SP2 to exactly the rows whose output error is lower
    with it (count free) — with ``gptq`` the rows are chosen once more on GPTQ's exact error; ``act_ranges``:
    ``observer`` (the plan's activation observer) or ``output`` (each input quantizer's clipping
    tuned on the layer's output error, :mod:`~mixq.algorithms.ptq.act_ranges`); ``act_calibration``:
    the activations the observers see, those of the network with its weights at nearest rounding
    (``quantized``) or of the float network (``float``; for recipes that round the weights afterwards,
    where nearest rounding is far from the final weights);
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
    stream_rotate: int | None = None
    weight_scales: str = "plan"
    msq_rows: str = "plan"
    act_ranges: str = "observer"
    act_calibration: str = "quantized"
    bias_correction: str = "none"
    bias_passes: int = 1
    adaround: AdaRoundConfig | None = None
    gptq: GPTQConfig | None = None
    brecq: BrecqConfig | None = None
    distill: DistillConfig | None = None
    restore_stats: bool = False
    datafree: DataFreeConfig | None = None
    stages: tuple[str, ...] = ()
    batch_size: int = 8
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise MixqError(f"recipe.{name}: {getattr(self, name)!r} is not one of {', '.join(choices)}")
        rounding = [n for n in ("adaround", "gptq", "brecq") if getattr(self, n) is not None]
        if len(rounding) > 1 and rounding != ["gptq", "brecq"]:  # GPTQ may start BRECQ, nothing else combines
            raise MixqError(f"recipe.{' / recipe.'.join(rounding)}: choose one rounding method, not several")
        if self.msq_rows != "plan" and self.weight_scales == "plan":
            raise MixqError(f"recipe.msq_rows: {self.msq_rows!r} needs weight_scales='output' or 'auto'")
        if isinstance(self.cle_act_weight, str) and self.cle_act_weight != "auto":
            raise MixqError(f"recipe.cle_act_weight: {self.cle_act_weight!r} is neither 'auto' nor a number in [0, 1]")
        for name in ("cle_act_weight", "stream_alpha"):
            v = getattr(self, name)
            if not isinstance(v, str) and not 0.0 <= v <= 1.0:
                raise MixqError(f"recipe.{name}: must be in [0, 1], got {v}")
        rot = self.stream_rotate
        if rot is not None and (isinstance(rot, bool) or not isinstance(rot, int) or rot < 0):
            raise MixqError(f"recipe.stream_rotate: a seed (an integer >= 0) or None, got {rot!r}")
        unknown = [n for n in self.stages if n not in EXTRA_STAGES]
        if unknown:
            raise MixqError(f"recipe.stages: {', '.join(map(repr, unknown))} not one of {', '.join(EXTRA_STAGES)}")
        require_positive(self, "recipe", ("batch_size", "cle_iterations", "bias_passes"))
        if self.version != RECIPE_VERSION:
            raise MixqError(f"recipe.version: {self.version} is not supported (this mixq reads {RECIPE_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    # the plan as written: fold BN, swap layers, calibrate activations with the plan's observers
    "plan": Recipe(name="plan", batch_size=256),
    "minmax": Recipe(name="minmax", weight_scales="auto"),
    "minmax_pct": Recipe(name="minmax_pct", weight_scales="auto", stages=("act_percentile",)),
    # the dfq recipes tune the activation ranges on the output error (act_ranges="output"; design_measurements.md)
    "dfq": Recipe(name="dfq", cle=True, cle_act_weight="auto", stream_equalize=True, weight_scales="auto",
                  act_ranges="output", bias_correction="analytic"),
    "dfq_empirical": Recipe(name="dfq_empirical", cle=True, cle_act_weight="auto", stream_equalize=True,
                            weight_scales="auto", act_ranges="output", bias_correction="empirical"),
    # no bias correction after AdaRound (its reconstruction already fits each layer's output; correcting on
    # top measured worse), and AdaRound starts from output-aware scales (design_measurements.md, "PTQ recipes")
    "adaround": Recipe(name="adaround", weight_scales="output", adaround=AdaRoundConfig(), bias_correction="none"),
    "gptq": Recipe(name="gptq", weight_scales="output", gptq=GPTQConfig(), bias_correction="none"),
    # block reconstruction (BRECQ + QDrop) from output-aware scales; no bias correction (as AdaRound)
    "brecq": Recipe(name="brecq", weight_scales="output", brecq=BrecqConfig(), bias_correction="none"),
    "datafree": Recipe(name="datafree", datafree=DataFreeConfig(), bias_correction="analytic"),
}


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


def quantize_report(model: nn.Module, plan: QuantPlan, calib: torch.Tensor | Iterable[torch.Tensor] | None = None,
                    recipe: str | Recipe = "plan", *, input_shape: tuple[int, ...] | None = None, fold: bool = True,
                    allow_float: bool | Iterable[str] = False, **overrides: Any) -> PTQResult:
    """Run a PTQ recipe (see the module doc): the stages of :mod:`~mixq.algorithms.ptq.pipeline` it
    switches on, in their one order; the input model is not changed. ``fold=False``: the model's
    BatchNorms are already folded. A compute layer that would stay in float raises a
    :class:`~mixq.errors.ModelError` naming it unless ``allow_float`` (``True`` or layer names) or the
    plan's ``meta["float_layers"]`` accepts it (:func:`mixq.graph.convert.to_quantized`)."""
    r = get_recipe(recipe, **overrides)
    data = as_tensor(calib) if calib is not None else None
    if input_shape is None:
        if data is None:
            raise DataError("quantize: give calibration data or input_shape")
        input_shape = tuple(int(s) for s in data.shape[1:])
    progress.log("ptq", recipe=r.name, model=plan.model, layers=len(plan.layers))
    state = PTQState(model, plan, r, input_shape, data, fold=fold, allow_float=allow_float)
    timings: dict[str, float] = {}
    with eval_mode(model):
        for stage in stages_of(r, plan):
            t = time.perf_counter()
            state = stage.run(state)
            timings[stage.name] = timings.get(stage.name, 0.0) + time.perf_counter() - t
            if stage.line is not None:
                progress.log(f"ptq {stage.name}", **stage.line(state), seconds=round(timings[stage.name], 3))
    q = state.quantized.eval()
    progress.log("ptq finished", recipe=r.name, seconds=round(sum(timings.values()), 2))
    return PTQResult(model=q, plan=state.plan, recipe=r, timings=timings, details=state.details)


def quantize(model: nn.Module, plan: QuantPlan, calib: torch.Tensor | Iterable[torch.Tensor] | None = None,
             recipe: str | Recipe = "plan", *, input_shape: tuple[int, ...] | None = None, fold: bool = True,
             allow_float: bool | Iterable[str] = False, **overrides: Any) -> nn.Module:
    """The one PTQ verb (also :func:`mixq.quantize`): ``model`` under ``plan`` with a named recipe (or a
    :class:`Recipe`; default ``"plan"``, the plan as written) on the calibration data ``calib``; returns
    the fake-quantized model (eval mode). :func:`quantize_report` gives timings and details too."""
    return quantize_report(model, plan, calib, recipe, input_shape=input_shape, fold=fold, allow_float=allow_float,
                           **overrides).model
