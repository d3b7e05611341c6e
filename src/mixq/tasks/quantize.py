"""The ``mixq quantize`` job: a model, its data and a plan through a PTQ recipe, written as an artifact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mixq import api
from mixq.algorithms import ptq
from mixq.algorithms.msq import MSQConfig, msq_plan
from mixq.algorithms.ptq import PTQResult
from mixq.artifact import save_artifact
from mixq.data.sources import ImageSet
from mixq.errors import OptionError
from mixq.graph.capture import capture
from mixq.tasks.data import auto_calib, held_out, load_source, preprocess, recorded
from mixq.tasks.models import load_checked_plan, load_model
from mixq.zoo.source import ModelSource


@dataclass(frozen=True)
class QuantizeJob:
    """What ``mixq quantize`` was asked: the model, its data (sources and preprocessing overrides), the plan
    (a file, an MSQ ratio or the default W8A8; ``residual_bits`` sets the plan's) and the recipe with its
    overrides."""

    source: ModelSource
    out: Path
    plan: Path | None = None
    msq: float | None = None
    recipe: str = "minmax"
    overrides: dict[str, Any] = field(default_factory=dict)
    calib: str = "auto"
    eval_source: str | None = None
    images: int = 256
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    gray: bool | None = None
    pretrained: bool = True
    residual_bits: int | None = None


@dataclass
class QuantizeOutcome:
    """The summary written to ``summary.json``, the PTQ result and the evaluation set (if any)."""

    summary: dict[str, Any]
    result: PTQResult
    evalset: ImageSet | None
    seconds: float


def jsonable(obj: Any) -> Any:
    """Numbers, strings, lists and dicts of them (tensors and other values become strings/lists)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, int | float | str | bool) or obj is None:
        return obj
    return str(obj)


def _evaluate(net: torch.nn.Module, q: torch.nn.Module, evalset: ImageSet, source: str) -> dict[str, Any]:
    """Top-1 of the float and the quantized model on labelled data, else their argmax agreement."""
    if evalset.labelled:
        res = {"top1_float": api.evaluate(net, evalset), "top1_quant": api.evaluate(q, evalset)}
    else:
        same = api.predict(q, evalset.x).argmax(1) == api.predict(net, evalset.x).argmax(1)
        res = {"agreement": 100.0 * float(same.float().mean())}
    return {"source": source, "images": len(evalset), **res}


def run_quantize(job: QuantizeJob) -> QuantizeOutcome:
    """Load, calibrate with the recipe, evaluate, and write the artifact folder ``job.out``
    (:func:`mixq.artifact.save_artifact`, each file atomically)."""
    if job.msq is not None and job.plan is not None:
        raise OptionError("--msq builds a plan; give either --msq or --plan, not both")
    src, name = job.source, job.source.name
    shape = tuple(src.shape())
    pre = preprocess(shape, name, job.input_size, job.mean, job.std, job.gray)
    net = load_model(src, pretrained=job.pretrained, fallback=False)
    calib = auto_calib(pre, shape, name) if job.calib == "auto" else job.calib
    data = load_source(calib, pre, job.images, "--calib", shape).x
    if pre is not None and pre.size != tuple(shape[1:]):  # e.g. a fully convolutional model at another size
        try:
            api.predict(net, data[:1])
        except RuntimeError as e:
            raise OptionError(f"--input-size {pre.size[0]}x{pre.size[1]}: {name} cannot take "
                              f"{pre.channels}x{pre.size[0]}x{pre.size[1]} inputs "
                              f"({str(e).splitlines()[0]})") from None
        shape = (pre.channels, *pre.size)
    evalset, left_out = None, 0
    if job.eval_source is not None:
        evalset, left_out = held_out(load_source(job.eval_source, pre, None, "--eval", shape), data)
    if job.plan is not None:
        qplan = load_checked_plan(job.plan, name, capture(net, shape))
    elif job.msq is not None:
        qplan = msq_plan(name, net, data[:8], MSQConfig(ratio=job.msq))
    else:
        qplan = api.default_plan(name, net, data[:8])
    if job.residual_bits is not None:
        qplan = replace(qplan, residual_bits=job.residual_bits)
    if "msq_rows" in job.overrides and not any(lp.weight_alt is not None for _, lp in qplan.items()):
        raise OptionError("--msq-rows: the plan has no second row format (MSQ); give --msq RATIO or an MSQ "
                          "--plan, or drop --msq-rows")
    overrides = dict(job.overrides)
    if "stages" in overrides:  # --stage adds to the recipe's own extra stages
        overrides["stages"] = tuple(dict.fromkeys(ptq.get_recipe(job.recipe).stages + overrides["stages"]))
    t = time.perf_counter()
    res = ptq.quantize_report(net, qplan, data, job.recipe, input_shape=shape, **overrides)
    seconds = time.perf_counter() - t
    evaluation = None if evalset is None else \
        _evaluate(net, res.model, evalset, str(recorded(job.eval_source))) | {"calibration_images_left_out": left_out}
    summary = {
        "model": name, "source": src.to_dict(), "pretrained": job.pretrained, "recipe": res.recipe.to_dict(),
        "calibration": {"source": recorded(calib), "images": int(data.shape[0]),
                        "preprocess": None if pre is None else pre.to_dict()},
        **({"eval": evaluation} if evaluation is not None else {}),
        "plan": str(job.plan) if job.plan is not None else ("msq" if job.msq is not None else "default W8A8"),
        "wall_time_s": round(seconds, 3), "timings_s": {k: round(v, 3) for k, v in res.timings.items()},
        "details": jsonable(res.details), "layers": api.layer_formats(res.model),
        "size_bytes_fp32": api.model_size_bytes(net), "size_bytes_quant": api.model_size_bytes(res.model),
    }
    save_artifact(job.out, name, res.plan, res.recipe.to_dict(), res.model, summary, source=src)
    return QuantizeOutcome(summary, res, evalset, seconds)
