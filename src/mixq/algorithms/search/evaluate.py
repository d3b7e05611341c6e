"""Quantize-and-evaluate candidate plans: serially, in a local process pool, or on Ray.

Each candidate is a real quantized model: :func:`mixq.algorithms.ptq.quantize` with the plan as
written (swap, calibrate activations) and then the user's ``eval_fn(qmodel) -> float`` (higher is better,
e.g. top-1 %). For the process pool and Ray the model, calibration images and
``eval_fn`` are shipped to each worker once; ``eval_fn`` must then be picklable
(`AccuracyEval` and `AgreementEval` are; a lambda is not, and falls back to serial).

Progress: the task ``search candidates`` advances as each candidate's figure comes back (in
order); the workers themselves report nothing.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.ptq import quantize
from mixq.errors import MixqError
from mixq.graph import ops
from mixq.plan import QuantPlan
from mixq.plan.jsonio import plan_from_dict, plan_to_dict

EXECUTORS = ("serial", "process", "ray")
EvalFn = Callable[[nn.Module], float]


@dataclass(frozen=True)
class AccuracyEval:
    """Top-1 accuracy (%) on labelled images."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int = 500

    def __call__(self, model: nn.Module) -> float:
        return ops.evaluate(model, self.x, self.y, self.batch_size)


@dataclass(frozen=True)
class AgreementEval:
    """Top-1 agreement (%) with a reference model's predictions (for data without labels)."""

    x: torch.Tensor
    ref: torch.Tensor  # reference class per image

    @staticmethod
    def of(model: nn.Module, x: torch.Tensor) -> AgreementEval:
        return AgreementEval(x, ops.predict(model, x).argmax(1))

    def __call__(self, model: nn.Module) -> float:
        return ops.evaluate(model, self.x, self.ref)


def quantize_and_eval(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plan: QuantPlan,
                      recipe: str = "plan") -> float:
    q = quantize(model, plan, calib, recipe)  # folds BN itself (nothing to fold in a folded model)
    return float(eval_fn(q))


_STATE: dict[str, Any] = {}


def _init(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, threads: int, recipe: str) -> None:
    torch.set_num_threads(threads)
    progress.configure("quiet")  # the parent reports each candidate
    _STATE.update(model=model, calib=calib, eval_fn=eval_fn, recipe=recipe)


def _work(plan: dict[str, Any]) -> float:
    return quantize_and_eval(_STATE["model"], _STATE["calib"], _STATE["eval_fn"], plan_from_dict(plan),
                             _STATE["recipe"])


def _ray_task(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plan: dict[str, Any], recipe: str) -> float:
    return quantize_and_eval(model, calib, eval_fn, plan_from_dict(plan), recipe)


def _picklable(obj: object) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - any pickling failure means "run serially"
        return False
    return True


def evaluate_plans(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plans: Sequence[QuantPlan],
                   executor: str = "process", workers: int = 2,
                   labels: Sequence[str] | None = None, recipe: str = "plan") -> list[float]:
    """``eval_fn`` of every plan's quantized model (PTQ ``recipe``), in the order of ``plans`` (``labels``: how
    the progress lines name them; default the model name)."""
    if executor not in EXECUTORS:
        raise MixqError(f"search.executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if labels is not None and len(labels) != len(plans):
        raise MixqError(f"evaluate_plans: {len(labels)} labels for {len(plans)} plans")
    with progress.task("search candidates", total=len(plans)) as task:
        out: list[float] = []
        names = list(labels) if labels is not None else [p.model for p in plans]
        for name, v in zip(names, _results(model, calib, eval_fn, plans, executor, workers, recipe), strict=True):
            out.append(v)
            task.advance(plan=name, figure=round(v, 3))
        return out


def _results(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plans: Sequence[QuantPlan], executor: str,
             workers: int, recipe: str) -> Iterator[float]:
    """The figures, in the order of ``plans``, as they come back."""
    if executor == "ray":
        yield from _ray(model, calib, eval_fn, plans, workers, recipe)
        return
    if executor == "serial" or workers <= 1 or len(plans) <= 1 or not _picklable(eval_fn):
        for p in plans:
            yield quantize_and_eval(model, calib, eval_fn, p, recipe)
        return
    n = min(workers, len(plans))
    threads = max(1, torch.get_num_threads() // n)
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init,
                             initargs=(model, calib, eval_fn, threads, recipe)) as ex:
        yield from ex.map(_work, [plan_to_dict(p) for p in plans])  # QuantPlan holds mapping proxies


def _ray(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plans: Sequence[QuantPlan],
         workers: int, recipe: str) -> Iterator[float]:
    try:
        import ray
    except ImportError as e:
        raise MixqError("search.executor: 'ray' needs the ray package (pip install ray)") from e
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_ray_task)
        m_ref, c_ref, f_ref = ray.put(model), ray.put(calib), ray.put(eval_fn)
        refs = [remote.remote(m_ref, c_ref, f_ref, plan_to_dict(p), recipe) for p in plans]
        for ref in refs:
            yield float(ray.get(ref))
    finally:
        if started:
            ray.shutdown()
