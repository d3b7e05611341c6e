"""`search_plan`: sensitivity → ILP at a sweep of frame rates → real quantized points → Pareto → choice.

1. Sensitivity of every layer to every option (`sensitivity`), cached on disk.
2. The fastest reachable design (`fastest`), and the uniform baselines (W8A8, W6A6,
   W4A4 with the folding `mixq.hw.estimate` optimizes) on the part.
3. One ILP per target frame rate: the baselines' rates (so each uniform plan has a
   searched plan at the same FPS), a geometric sweep up to the fastest, and the
   user's ``target_fps``. Every plan is checked with `mixq.hw.estimate` on its own
   folding (and re-solved with a little headroom if the estimate disagrees). A model
   with residual adds gets the sweep once per residual-stream width of the space
   (``SearchSpace.residual_bits``: exact, 12 and 8 bits by default; the adds and skip
   FIFOs priced at it), so stream width is traded against accuracy like the rest.
4. Every plan is quantized and evaluated (`evaluate_plans`); the Pareto front is
   the points no other point beats on both accuracy and FPS.
5. The chosen point: the target's plan (``target_fps``; the most accurate of its stream
   widths), or the fastest point within ``max_drop`` of the float model (default 1 point).

Progress (:mod:`mixq.progress`): the tasks ``search sensitivity`` (per layer), ``search ilp``
(per target frame rate) and ``search candidates`` (per evaluated plan), and a ``search chose`` line.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.msq import row_advantage
from mixq.algorithms.ptq import RECIPES
from mixq.algorithms.search.allocate import Allocation, allocate, fastest, to_plan
from mixq.algorithms.search.costs import HwTable
from mixq.algorithms.search.evaluate import EvalFn, evaluate_plans
from mixq.algorithms.search.sensitivity import (
    Sensitivity,
    SensitivityConfig,
    accumulator_bits,
    check_acc_bits,
    compute_weights,
    engine_refuses,
    sensitivity,
    weight_code_sum,
)
from mixq.algorithms.search.space import Option, SearchSpace, layer_plan, weight_formats
from mixq.errors import CheckFailed, MixqError
from mixq.graph import ops
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.graph.spec import LayerSpec
from mixq.hw import apply_folding, estimate
from mixq.hw.bits import ENGINE_ACC_BITS
from mixq.plan import QuantPlan


@dataclass(frozen=True)
class SearchConfig:
    """Settings of `search_plan` (all reported in ``pareto.json``)."""

    space: SearchSpace = field(default_factory=SearchSpace)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    points: int = 4  # geometric sweep points between the slowest baseline and the fastest design
    baselines: tuple[tuple[int, int], ...] = ((8, 8), (6, 6), (4, 4))
    executor: str = "process"
    workers: int = 2
    cache_dir: str | None = None
    default_max_drop: float = 1.0
    acc_bits: int = ENGINE_ACC_BITS  # the integer engine's accumulator budget (hw.bits mirrors its default)
    recipe: str = "plan"  # the PTQ recipe every candidate is quantized with to be judged (plan: min-max)

    def __post_init__(self) -> None:
        if self.points < 0 or self.workers < 1:
            raise MixqError("search: points must be >= 0 and workers >= 1")
        check_acc_bits("search", self.acc_bits)
        if self.recipe not in RECIPES:
            raise MixqError(f"search.recipe: {self.recipe!r} is not one of {', '.join(RECIPES)}")


@dataclass(frozen=True)
class Point:
    """One evaluated design: a searched plan or a uniform baseline."""

    label: str
    kind: str  # "searched" | "uniform"
    plan: QuantPlan
    fps: float
    fits: bool
    resources: dict[str, float]
    utilization: dict[str, float]
    sensitivity: float
    accuracy: float = math.nan
    drop: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        meta = self.plan.meta.get("search", {})
        return {"label": self.label, "kind": self.kind, "fps": round(self.fps, 2), "fits": self.fits,
                "accuracy": round(self.accuracy, 3), "drop": round(self.drop, 3),
                "sensitivity": self.sensitivity, "resources": self.resources,
                "utilization": self.utilization, "options": meta.get("options", {}),
                "residual_bits": self.plan.residual_bits}


@dataclass(frozen=True)
class SearchResult:
    plan: QuantPlan
    chosen: Point
    pareto: list[Point]
    points: list[Point]
    baselines: dict[str, Point]
    reference_accuracy: float
    best_fps: float
    part: str
    target_fps: float | None
    max_drop: float | None
    timings: dict[str, float]
    sensitivity: Sensitivity
    config: SearchConfig
    met: bool = True  # False: no searched plan met the target or the accuracy bound (``chosen``: the most accurate)
    eval_images: int | None = None  # how many images each figure is taken on (None: an eval_fn that does not say)

    def to_dict(self) -> dict[str, Any]:
        n = self.eval_images
        return {"part": self.part, "target_fps": self.target_fps, "max_drop": self.max_drop, "met": self.met,
                "eval_images": n, "one_image_points": round(100.0 / n, 4) if n else None,
                "reference_accuracy": round(self.reference_accuracy, 3), "best_reachable_fps": round(self.best_fps, 2),
                "chosen": self.chosen.to_dict(), "pareto": [p.to_dict() for p in self.pareto],
                "points": [p.to_dict() for p in self.points],
                "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
                "sensitivity_method": self.sensitivity.method, "sensitivity_key": self.sensitivity.key,
                "config": asdict(self.config)}


class SearchUnmet(CheckFailed):
    """No searched plan meets the target frame rate or the accuracy bound, found after every plan was evaluated:
    ``result`` keeps that work (``met`` False, ``chosen`` the most accurate searched plan) for the caller to write."""

    def __init__(self, message: str, result: SearchResult) -> None:
        super().__init__(message)
        self.result = result


def pareto_front(points: list[Point]) -> list[Point]:
    """Points that fit and that no other fitting point beats on both FPS and accuracy, by FPS."""
    ok = [p for p in points if p.fits]
    front = [p for p in ok if not any(q.fps >= p.fps and q.accuracy >= p.accuracy
                                      and (q.fps > p.fps or q.accuracy > p.accuracy) for q in ok)]
    return sorted(front, key=lambda p: p.fps)


def unique_label(label: str, taken: list[str]) -> str:
    """``label``, or ``label #k`` when ``taken`` holds it already (k - 1 times, numbered ones included)."""
    n = sum(t == label or t.startswith(f"{label} #") for t in taken)
    return f"{label} #{n + 1}" if n else label


def _point(label: str, kind: str, plan: QuantPlan, specs: list[LayerSpec], part: str, sens: float) -> Point:
    e = estimate(specs, plan, part, "streaming", fold="plan")
    return Point(label, kind, plan, e.fps, e.fits, e.resources.to_dict(),
                 {k: round(v, 4) for k, v in e.utilization.items()}, sens)


def _searched(name: str, table: HwTable, sens: Sensitivity, t: int, specs: list[LayerSpec], part: str,
              signed: set[str], adv: dict[str, torch.Tensor]) -> Point | None:
    """The ILP's plan at ``t`` cycles per frame, checked by the estimate (re-solved with headroom if needed)."""
    scale = 1.0
    for _ in range(5):
        a: Allocation | None = allocate(table, sens, t, cap_scale=scale)
        if a is None:
            return None
        plan = to_plan(name, a, signed, adv)
        streams = "" if table.residual_bits is None else f" r{table.residual_bits}"
        pt = _point(f"searched@{table.fps_of(t):.0f}{streams}", "searched", plan, specs, part, a.sensitivity)
        if pt.fits:
            return pt
        scale *= 0.97
    return None


def _uniform(name: str, o: Option, specs: list[LayerSpec], part: str, signed: set[str],
             sens: Sensitivity) -> Point:
    plan = QuantPlan(name, {s.name: layer_plan(o, s.name in signed) for s in specs if s.is_compute})
    e = estimate(specs, plan, part, "streaming", fold="optimize")
    plan = apply_folding(plan, e)
    try:
        s = sum(sens.of(n, o.wbits, o.abits, o.rho) for n in plan.layers)
    except KeyError:  # a baseline outside the search space
        s = math.nan
    return _point(f"uniform {o.label.upper()}", "uniform", plan, specs, part, s)


def _wide_accumulators(weights: dict[str, torch.Tensor], adv: dict[str, torch.Tensor], options: list[Option],
                       signed: set[str], acc_bits: int) -> dict[tuple[str, int], int]:
    """``(layer, option index) -> bits`` of the options the integer engine would refuse (:func:`engine_refuses`
    with budget ``acc_bits``). In practice SP2 rows at 8 bits (codes up to 2**15) on rows of a few hundred weights
    or more: CNV's classifier.0 (3,136 weights a row) needs 34 bits."""
    sums: dict[tuple[str, int, float], int] = {}
    out = {}
    for n, w in weights.items():
        for oi, o in enumerate(options):
            k = (n, o.wbits, o.rho)
            if k not in sums:
                sums[k] = weight_code_sum(w, o.wbits, o.rho, adv[n])
            if engine_refuses(sums[k], o.abits, n in signed, acc_bits):
                out[(n, oi)] = accumulator_bits(sums[k], o.abits, n in signed)
    if out:
        progress.log("search options left out", layer_options=len(out), acc_bits=acc_bits,
                     widest=max(out.values()), reason="worst-case accumulator within a bit of the engine's budget")
    return out


def search_plan(model_name: str, model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn,
                part: str = "xc7z020", target_fps: float | None = None, max_drop: float | None = None,
                cfg: SearchConfig | None = None) -> SearchResult:
    """Search a mixed-precision, mixed-scheme plan with folding for ``model`` on ``part``.

    ``calib``: calibration inputs (also the sensitivity data); ``eval_fn(qmodel)``: the
    figure to keep high (e.g. top-1 %). Raises `CheckFailed` (exit 3 on the command line) when ``target_fps`` is
    above the fastest design that fits, naming that figure; :class:`SearchUnmet` (a `CheckFailed` holding every
    evaluated point) when no searched plan meets the target or the accuracy bound.
    """
    if target_fps is not None and max_drop is not None:
        raise MixqError("search: give target_fps or max_drop, not both")
    if target_fps is not None and target_fps <= 0:
        raise MixqError(f"search: target_fps must be positive, got {target_fps}")
    cfg = cfg or SearchConfig()
    x_eval = getattr(eval_fn, "x", None)
    n_eval = int(x_eval.shape[0]) if isinstance(x_eval, torch.Tensor) else None
    bound = (cfg.default_max_drop if max_drop is None else max_drop) if target_fps is None else None
    if n_eval and bound is not None and bound < 100.0 / n_eval:
        progress.log("search resolution", eval_images=n_eval, one_image_points=round(100.0 / n_eval, 3),
                     max_drop=bound, note="the accuracy bound is finer than one image; judge on more images")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    folded = fold_bn(model).eval()
    specs = capture(folded, tuple(calib.shape[1:]))
    signed = ops.signed_input_layers(folded, calib[:64])[1]
    sens = sensitivity(folded, calib, cfg.space, sorted(signed), cfg.sensitivity, model_name, cfg.cache_dir)
    times["sensitivity"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    fixed4, sp2_4 = weight_formats(4)
    weights = {n: m.weight.detach() for n, m in compute_weights(folded).items()}
    adv = {n: row_advantage(w, fixed4, sp2_4) for n, w in weights.items()}
    options = cfg.space.options()
    wide = _wide_accumulators(weights, adv, options, signed, cfg.acc_bits)
    table = HwTable(specs, options, part, sorted(signed), excluded=frozenset(wide))
    tables = [table.with_residual_bits(r) for r in dict.fromkeys(cfg.space.residual_widths(specs))]
    bests = [(tb, a) for tb in tables if (a := fastest(tb, sens)) is not None]
    if not bests:
        raise CheckFailed(f"search: no plan in the search space fits {part}, even at the slowest folding")
    best_fps = max(a.fps(tb) for tb, a in bests)
    if target_fps is not None and target_fps > best_fps * (1 + 1e-9):
        raise CheckFailed(f"search: target {target_fps:g} FPS is not reachable on {part}: the fastest design "
                            f"that fits reaches {best_fps:.1f} FPS")
    baselines = {f"w{w}a{a}": _uniform(model_name, Option(w, a), specs, part, signed, sens)
                 for w, a in cfg.baselines}
    fps_targets = {round(p.fps, 3) for p in baselines.values() if p.fits and p.fps <= best_fps}
    lo = min(fps_targets | {best_fps / 4})
    fps_targets |= {lo * (best_fps / lo) ** (k / max(cfg.points, 1)) for k in range(1, cfg.points + 1)}
    if target_fps is not None:
        fps_targets.add(target_fps)
    cyc = sorted({table.cycles_for(f) for f in fps_targets} | {a.cycles for _, a in bests})
    searched: dict[int, list[Point]] = {}
    seen: dict[str, Point] = {}
    with progress.task("search ilp", total=len(cyc) * len(bests)) as task:
        for t in cyc:
            for tb, _ in bests:
                pt = _searched(model_name, tb, sens, t, specs, part, signed, adv)
                if pt is not None:  # the same plan found for two targets is evaluated once
                    key = repr((pt.plan.residual_bits, sorted((n, repr(lp)) for n, lp in pt.plan.items())))
                    if key not in seen:  # two budgets a few cycles apart round to one rate: labels stay unique
                        pt = replace(pt, label=unique_label(pt.label, [q.label for q in seen.values()]))
                    searched.setdefault(t, []).append(seen.setdefault(key, pt))
                task.advance(target_fps=round(table.fps_of(t), 1), plans=len(seen))
    times["ilp_sweep"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    uniq = list(seen.values())
    pts = uniq + list(baselines.values())
    # judged as `mixq quantize` makes them: from the model with its BatchNorms, which the recipe folds itself
    # (dfq's bias absorption and analytic bias correction read the BN statistics; folded first, they have none)
    accs = evaluate_plans(model, calib, eval_fn, [p.plan for p in pts], cfg.executor, cfg.workers,
                          labels=[p.label for p in pts], recipe=cfg.recipe)
    ref = float(eval_fn(folded))
    pts = [Point(p.label, p.kind, p.plan, p.fps, p.fits, p.resources, p.utilization, p.sensitivity, a, ref - a)
           for p, a in zip(pts, accs, strict=True)]
    times["evaluate"] = time.perf_counter() - t2
    done = {id(old): new for old, new in zip(uniq, pts, strict=False)}
    by_t = {t: [done[id(p)] for p in ps] for t, ps in searched.items()}
    searched_pts = pts[: len(uniq)]
    top = max(searched_pts, key=lambda p: p.accuracy)
    unmet = None
    if target_fps is not None:
        t = table.cycles_for(target_fps)
        if t not in by_t:
            unmet = (f"search: target {target_fps:g} FPS is not reachable on {part}: the fastest design that fits "
                     f"reaches {best_fps:.1f} FPS")
        chosen = max(by_t.get(t, [top]), key=lambda p: p.accuracy)  # of the residual widths tried at this rate
    else:
        d = cfg.default_max_drop if max_drop is None else max_drop
        within = [p for p in searched_pts if p.drop <= d]
        if not within:
            base_top = max(pts[len(uniq):], key=lambda p: p.accuracy)  # what even the baselines reach, and fit
            fits = "" if base_top.fits else f", does not fit {part}"
            unmet = (f"search: no searched plan stays within {d:g} points of the float model (best: {top.label}, "
                     f"drop {top.drop:.2f} at {top.fps:.0f} FPS; {base_top.label}: drop {base_top.drop:.2f}{fits})")
        chosen = max(within, key=lambda p: (p.fps, p.accuracy)) if within else top
    times["total"] = time.perf_counter() - t0
    plan = chosen.plan.with_meta(search_result={"fps": chosen.fps, "accuracy": chosen.accuracy, "part": part})
    base = dict(zip(baselines, pts[len(uniq):], strict=True))
    result = SearchResult(plan, chosen, pareto_front(pts), pts, base, ref, best_fps, part, target_fps, max_drop,
                          times, sens, cfg, met=unmet is None, eval_images=n_eval)
    if unmet is not None:
        raise SearchUnmet(unmet, result)
    progress.log("search chose", chosen=chosen.label, fps=round(chosen.fps, 1), accuracy=round(chosen.accuracy, 2),
                 seconds=round(times["total"], 1))
    return result
