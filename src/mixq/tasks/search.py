"""What a search judges plans on: a bundled task, or the data a ``mixq quantize`` artifact records.

* ``cnv``: Fashion-MNIST; calibration on the shipped training images, top-1 accuracy on
  the shipped test subset (or the full test split with ``full_test``).
* ``mobilenet_v2``: ImageNet-normalised natural photos (`mixq.data.calibration_set`);
  no labels ship, so the figure is top-1 agreement with the float model on held-out crops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import data, zoo
from mixq.algorithms.search.evaluate import AccuracyEval, AgreementEval, EvalFn
from mixq.artifact import read_checkpoint, read_summary
from mixq.data.sources import Preprocess
from mixq.errors import DataError, MixqError
from mixq.tasks.data import fmnist_eval, held_out, load_source, recorded_data
from mixq.tasks.models import load_model
from mixq.zoo.source import ModelSource

TASKS = ("cnv", "mobilenet_v2")


def bundled_task(name: str, pretrained: bool = True, calib_images: int = 256, eval_images: int = 1000,
                 full_test: bool = False, weights: str | Path | None = None) -> tuple[nn.Module, torch.Tensor, EvalFn]:
    """``(model, calibration images, eval_fn)`` of a bundled task (``weights``: a CNV state dict file)."""
    if name not in TASKS:
        raise MixqError(f"search: model {name!r} has no bundled task (one of {', '.join(TASKS)})")
    if weights is not None and name == "cnv":
        from mixq.zoo.cnv import load_pretrained

        model = load_pretrained(zoo.load(name), weights).eval()
    else:
        model = zoo.load(name, pretrained=pretrained).eval()
    if name == "cnv":
        xs, ys, calib = fmnist_eval("fmnist" if full_test else "fmnist-subset", None)
        return model, calib[:calib_images], AccuracyEval(xs[:eval_images], ys[:eval_images].to(torch.int64))
    calib = data.calibration_set(n=calib_images, seed=0)
    held = data.calibration_set(n=eval_images, seed=1)
    return model, calib, AgreementEval.of(model, held)


def artifact_task(folder: Path, calib_images: int, eval_images: int, eval_source: str | None
                  ) -> tuple[str, nn.Module, torch.Tensor, EvalFn]:
    """``(name, float model, calibration images, eval_fn)`` of a `mixq quantize` artifact: its model source
    (real weights), its calibration source and preprocessing as recorded; the figure is top-1 on
    ``eval_source`` (or the artifact's ``--eval``) when that has labels, else argmax agreement with the float
    model on images of the calibration source that calibration does not use."""
    ck = read_checkpoint(folder)
    summary = read_summary(folder)
    src = ck.source if ck.source is not None else ModelSource(ck.model_name)
    net = load_model(src, pretrained=bool(summary.get("pretrained", True)), fallback=False)
    calib_src, recorded_eval, pre = recorded_data(summary)
    shape = tuple(src.shape())
    if pre is None and len(shape) >= 3:
        pre = Preprocess.for_input(shape)
    source = calib_src or ("shipped" if shape[0] == 1 else "photos")
    eval_source = eval_source or recorded_eval
    if eval_source is not None:
        calib = load_source(source, pre, calib_images, "--calib", shape).x
        # the calibration source again (or a folder holding copies): its calibration images do not judge
        evalset, _ = held_out(load_source(eval_source, pre, calib_images + eval_images, "--eval", shape), calib)
        x = evalset.x[:eval_images]
        if evalset.y is not None:
            return ck.model_name, net, calib, AccuracyEval(x, evalset.y[:eval_images])
        return ck.model_name, net, calib, AgreementEval.of(net, x)
    both = load_source(source, pre, calib_images + eval_images, "--calib", shape).x
    if len(both) <= calib_images:
        raise DataError(f"--from {folder}: calibration source {source!r} has {len(both)} images, none left to "
                        f"judge the plans on; lower --calib-images or give --eval")
    return ck.model_name, net, both[:calib_images], AgreementEval.of(net, both[calib_images:])


def artifact_recipe(folder: Path) -> tuple[str, bool]:
    """The PTQ recipe a `mixq quantize` artifact was made with, by name, for a search from it to judge its
    candidates the same way (``plan`` when it records none or one search does not know), and whether the
    artifact's recipe carried overrides (``--set``, ``--stage``) that the named recipe does not."""
    from mixq.algorithms.ptq import RECIPES, get_recipe

    rec = read_summary(folder).get("recipe")
    name = rec.get("name") if isinstance(rec, dict) else None
    if not isinstance(rec, dict) or not isinstance(name, str) or name not in RECIPES:
        return "plan", False
    return name, _plain(rec) != _plain(get_recipe(name).to_dict())


def _plain(d: dict[str, Any]) -> Any:
    """A recipe dict as summary.json holds it, without its version."""
    return json.loads(json.dumps({k: v for k, v in d.items() if k != "version"}, default=str))
