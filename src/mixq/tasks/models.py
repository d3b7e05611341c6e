"""The models of a command: the float model as every stage sees it, a checked plan, the quantized model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import api
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.graph.normalize import normalize
from mixq.graph.spec import LayerSpec
from mixq.plan import QuantPlan, load_plan, uniform_plan, validate_plan
from mixq.tasks.data import artifact_inputs, default_inputs
from mixq.zoo.source import ModelSource


def load_model(src: ModelSource, **kw: Any) -> nn.Module:
    """The float model of a :class:`ModelSource` (``kw``: ``ModelSource.load`` options) as every stage sees
    it: Conv1d / ConvTranspose2d written as the 2-D convolutions mixq runs (:mod:`mixq.graph.normalize`)."""
    return normalize(src.load(**kw), tuple(src.shape()))


def layer_rows(specs: Iterable[Any]) -> dict[str, int]:
    """Each compute layer's name -> its number of weight rows (output channels)."""
    return {s.name: int(s.out_channels) for s in specs if s.is_compute}


def load_checked_plan(path: Path, model: str, specs: Iterable[Any]) -> QuantPlan:
    """``--plan FILE``: loaded and validated by the one plan check every command uses
    (:func:`mixq.plan.validate_plan`: model name, layer names, row indices, not empty)."""
    return validate_plan(load_plan(path), model=model, layers=layer_rows(specs))


def quantized(src: ModelSource | str, plan_path: Path | None, weight: Any, act: Any, size: int | None,
              images: int, from_: Path | None = None) -> tuple[nn.Module, torch.Tensor]:
    """(fake-quant model, evaluation inputs): the ``--from`` artifact's model as it is (on the data it
    records, else the model's default data), or ``src`` under ``plan_path`` / the default plan for the
    formats ``weight`` / ``act``, calibrated with min-max."""
    if from_ is not None:
        from mixq.artifact import load_artifact

        art = load_artifact(from_)
        recorded = artifact_inputs(art, images) if size is None else None
        if recorded is not None:
            return art.qmodel, recorded
        x, _ = default_inputs(art.source if art.source is not None else art.model_name, size, images, calib=False)
        return art.qmodel, x
    if isinstance(src, str):
        src = ModelSource(src)
    torch.manual_seed(0)
    folded = fold_bn(load_model(src, pretrained=True).eval())
    x, calib = default_inputs(src, size, images)
    if plan_path is not None:
        c, h, w = src.shape()
        plan = load_checked_plan(plan_path, src.name, capture(folded, (c, size or h, size or w)))
    else:
        plan = api.default_plan(src.name, folded, calib[:64], weight=weight, act=act)
    return api.quantize(folded, plan, calib, fold=False), x


def layer_specs(src: ModelSource) -> list[LayerSpec]:
    """The layers of ``src``'s model (random weights: shapes and MACs only), as the estimator reads them."""
    return capture(load_model(src, pretrained=False), tuple(src.shape()))


def hw_plan(model: str, specs: list[LayerSpec], plan_path: Path | None, weight: Any, act: Any,
            from_: Path | None = None) -> QuantPlan:
    """The plan an estimate prices: the ``--from`` artifact's as quantize applied it (MSQ rows filled in),
    a ``--plan`` file, or a uniform plan of the formats ``weight`` / ``act`` — each checked against ``specs``."""
    if from_ is not None:
        from mixq.artifact import read_checkpoint

        return validate_plan(read_checkpoint(from_).plan, model=model, layers=layer_rows(specs))
    if plan_path is not None:
        return load_checked_plan(plan_path, model, specs)
    names = [s.name for s in specs if s.is_compute]
    # the first layer sees normalised (signed) images; every other input follows a ReLU
    return uniform_plan(model, names, weight, act, signed_inputs=names[:1])
