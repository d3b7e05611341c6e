"""Quantize-and-evaluate candidate plans: serially, in a local process pool, or on Ray.

Each candidate is a real quantized model: ``mixq.graph.ops.quantize`` (swap, calibrate
activations) and then the user's ``eval_fn(qmodel) -> float`` (higher is better,
e.g. top-1 %). For the process pool and Ray the model, calibration images and
``eval_fn`` are shipped to each worker once; ``eval_fn`` must then be picklable
(`AccuracyEval` and `AgreementEval` are; a lambda is not, and falls back to serial).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


def quantize_and_eval(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plan: QuantPlan) -> float:
    q = ops.quantize(model, plan, calib, fold=False)
    return float(eval_fn(q))


_STATE: dict[str, Any] = {}


def _init(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, threads: int) -> None:
    torch.set_num_threads(threads)
    _STATE.update(model=model, calib=calib, eval_fn=eval_fn)


def _work(plan: dict[str, Any]) -> float:
    return quantize_and_eval(_STATE["model"], _STATE["calib"], _STATE["eval_fn"], plan_from_dict(plan))


def _ray_task(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plan: dict[str, Any]) -> float:
    return quantize_and_eval(model, calib, eval_fn, plan_from_dict(plan))


def _picklable(obj: object) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - any pickling failure means "run serially"
        return False
    return True


def evaluate_plans(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plans: Sequence[QuantPlan],
                   executor: str = "process", workers: int = 2) -> list[float]:
    """``eval_fn`` of every plan's quantized model, in the order of ``plans``."""
    if executor not in EXECUTORS:
        raise MixqError(f"search.executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        return _ray(model, calib, eval_fn, plans, workers)
    if executor == "serial" or workers <= 1 or len(plans) <= 1 or not _picklable(eval_fn):
        return [quantize_and_eval(model, calib, eval_fn, p) for p in plans]
    n = min(workers, len(plans))
    threads = max(1, torch.get_num_threads() // n)
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init,
                             initargs=(model, calib, eval_fn, threads)) as ex:
        return list(ex.map(_work, [plan_to_dict(p) for p in plans]))  # QuantPlan holds mapping proxies


def _ray(model: nn.Module, calib: torch.Tensor, eval_fn: EvalFn, plans: Sequence[QuantPlan],
         workers: int) -> list[float]:
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
        return [float(v) for v in ray.get([remote.remote(m_ref, c_ref, f_ref, plan_to_dict(p)) for p in plans])]
    finally:
        if started:
            ray.shutdown()
