"""Tomato-style per-layer arithmetic selection (Zhao et al., FPT 2019): an alternative to the ILP.

Layers are visited in forward order; each tries the formats of a ladder from the cheapest
arithmetic up — a single shift (power of two), then SP2 (two shifts and an add), then fixed
point, narrow to wide — and keeps the first one that passes the judge:

* ``"accuracy"``: the model with the layers decided so far, this layer in the candidate format
  and the layers still to decide at the ladder's widest format is quantized and scored with the
  search's own PTQ + evaluation (`evaluate.quantize_and_eval`); it passes within ``threshold``
  points of the float model.
* ``"proxy"``: HAWQ's weight term of the search's sensitivity, with the layer's mean Hessian trace
  (the per-row traces `sensitivity` estimates, summed): ``0.5 · tr / n · ‖Q(W) − W‖²`` must stay
  at most ``threshold`` nats divided by the number of layers (the KL budget shared evenly). One
  Hutchinson pass, no quantized model per trial: the judge for large networks.

Activations stay at ``abits`` bits throughout (Tomato: FXP8). The folding is then the fastest
that `mixq.hw.estimate` finds on the part (streaming template), carried in the plan.

>>> [k for k in LADDER][:3]
['pot4', 'pot5', 'sp2-4']
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.search.evaluate import EvalFn, quantize_and_eval
from mixq.algorithms.search.sensitivity import (
    Sensitivity,
    SensitivityConfig,
    check_acc_bits,
    compute_weights,
    engine_refuses,
    format_code_sum,
    sensitivity,
)
from mixq.algorithms.search.space import SearchSpace, act_format, weight_formats
from mixq.errors import MixqError
from mixq.formats import NumberFormat, PowerOfTwo
from mixq.graph import ops
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.hw import apply_folding, estimate
from mixq.hw.bits import ENGINE_ACC_BITS
from mixq.hw.parts import Part
from mixq.plan import LayerPlan, QuantPlan
from mixq.quant import quantize_weight

# The arithmetic ladder, cheapest first: shift (PoT), shift-add (SP2), multiply (fixed point), narrow to wide.
LADDER: dict[str, NumberFormat] = {
    "pot4": PowerOfTwo(4),
    "pot5": PowerOfTwo(5),
    "sp2-4": weight_formats(4)[1],
    "sp2-6": weight_formats(6)[1],
    "fixed4": weight_formats(4)[0],
    "fixed6": weight_formats(6)[0],
    "fixed8": weight_formats(8)[0],
}
JUDGES = ("accuracy", "proxy")


@dataclass(frozen=True)
class GreedyConfig:
    """Settings of `greedy_plan` (all reported in the result)."""

    ladder: tuple[str, ...] = tuple(LADDER)
    abits: int = 8
    judge: str = "accuracy"
    threshold: float = 1.0  # "accuracy": points of the figure; "proxy": total KL budget (nats)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    acc_bits: int = ENGINE_ACC_BITS  # the integer engine's accumulator budget, as `SearchConfig.acc_bits`

    def __post_init__(self) -> None:
        check_acc_bits("greedy", self.acc_bits)
        if self.judge not in JUDGES:
            raise MixqError(f"greedy.judge: {self.judge!r} is not one of {', '.join(JUDGES)}")
        bad = [k for k in self.ladder if k not in LADDER]
        if bad or not self.ladder:
            raise MixqError(f"greedy.ladder: {bad or 'empty'} not in {', '.join(LADDER)}")
        if not 2 <= self.abits <= 8:
            raise MixqError(f"greedy.abits: must be in 2..8, got {self.abits}")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise MixqError(f"greedy.threshold: must be a finite number >= 0, got {self.threshold}")


@dataclass(frozen=True)
class GreedyResult:
    plan: QuantPlan
    choices: dict[str, str]  # layer -> ladder key
    accuracy: float
    reference: float
    fps: float
    fits: bool
    resources: dict[str, float]
    trials: int
    seconds: float
    config: GreedyConfig

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for k in self.choices.values():
            counts[k] = counts.get(k, 0) + 1
        return {"judge": self.config.judge, "threshold": self.config.threshold, "abits": self.config.abits,
                "accuracy": round(self.accuracy, 3), "reference": round(self.reference, 3),
                "drop": round(self.reference - self.accuracy, 3), "fps": round(self.fps, 2), "fits": self.fits,
                "resources": self.resources, "trials": self.trials, "seconds": round(self.seconds, 2),
                "arithmetic_counts": counts, "choices": self.choices}


def proxy_scores(model: nn.Module, sens: Sensitivity, ladder: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``0.5 · mean trace · ‖Q(W) − W‖²`` of every layer in every ladder format (KL, nats)."""
    if not sens.traces:
        raise MixqError("greedy proxy: the sensitivity has no Hessian traces (use method 'hessian')")
    out: dict[str, dict[str, float]] = {}
    for n, m in compute_weights(model).items():
        w = m.weight.detach()
        tr = sens.traces[n] / w.numel()
        out[n] = {k: float(0.5 * tr * (quantize_weight(w, LADDER[k]) - w).pow(2).sum()) for k in ladder}
    return out


def _plan(name: str, choices: dict[str, str], abits: int, signed: set[str]) -> QuantPlan:
    return QuantPlan(name, {n: LayerPlan(weight=LADDER[k], act=act_format(abits, n in signed))
                            for n, k in choices.items()})


def greedy_plan(model_name: str, model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn,
                part: str | Part = "xc7z020", cfg: GreedyConfig | None = None,
                sens: Sensitivity | None = None, cache_dir: str | None = None) -> GreedyResult:
    """The cheapest arithmetic per layer within ``cfg.threshold`` (see the module doc), with its folding.

    ``sens``: a `Sensitivity` with Hessian traces to reuse (the proxy judge; e.g. the ILP search's).
    """
    cfg = cfg or GreedyConfig()
    t0 = time.perf_counter()
    folded = fold_bn(model).eval()
    specs = capture(folded, tuple(calib.shape[1:]))
    order, signed = ops.signed_input_layers(folded, calib[:64])
    weights = compute_weights(folded)
    names = [n for n in order if n in weights]
    widest = cfg.ladder[-1]
    choices = dict.fromkeys(names, widest)
    # formats whose worst-case accumulator the engine refuses are skipped, as the ILP leaves them out (pot5 on CNV's
    # classifier.0: codes up to 2**14 on 3,136 weights a row, 33 bits); the widest stays, as the fallback
    ladder = {n: [k for k in cfg.ladder if k == widest or not engine_refuses(
        format_code_sum(weights[n].weight, LADDER[k]), cfg.abits, n in signed, cfg.acc_bits)] for n in names}
    ref = float(eval_fn(folded))
    trials = 0
    if cfg.judge == "proxy":
        if sens is None:
            space = SearchSpace(wbits=(8,), abits=(cfg.abits,), rhos=(0.0,))
            sens = sensitivity(folded, calib, space, sorted(signed), cfg.sensitivity, model_name, cache_dir)
        scores = proxy_scores(folded, sens, cfg.ladder)
        share = cfg.threshold / max(len(names), 1)
        for n in names:
            choices[n] = next((k for k in ladder[n] if scores[n][k] <= share), widest)
            trials += ladder[n].index(choices[n]) + 1
    else:
        with progress.task("search greedy", total=len(names)) as task:
            for n in names:
                for k in ladder[n]:
                    trials += 1
                    trial = {**choices, n: k}
                    fig = quantize_and_eval(folded, calib, eval_fn, _plan(model_name, trial, cfg.abits, signed))
                    if k == widest or ref - fig <= cfg.threshold:
                        choices[n] = k
                        break
                task.advance(layer=n, arithmetic=choices[n])
    plan = _plan(model_name, choices, cfg.abits, signed)
    e = estimate(specs, plan, part, "streaming", fold="optimize")
    plan = apply_folding(plan, e).with_meta(search={"solver": "greedy", "options": dict(choices)})
    acc = quantize_and_eval(folded, calib, eval_fn, plan)
    return GreedyResult(plan, choices, acc, ref, e.fps, e.fits, e.resources.to_dict(), trials,
                        time.perf_counter() - t0, cfg)
