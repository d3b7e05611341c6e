"""What ``mixq qat`` and ``mixq prune`` train on: the labelled data, the starting float model, its plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import api, validate, zoo
from mixq.algorithms.msq import assign_rows
from mixq.algorithms.qat import init_distributed, low_bit_plan
from mixq.data import GRAY_MEAN, GRAY_STD, load_fashion_mnist, load_mnist, normalize_gray
from mixq.errors import ModelError, OptionError
from mixq.graph.capture import capture
from mixq.plan import QuantPlan
from mixq.tasks.models import load_checked_plan

DATASETS = {"fmnist": load_fashion_mnist, "mnist": load_mnist}
#: the normalised value of a black pixel: what random-crop padding fills with
PAD_FILL = -GRAY_MEAN / GRAY_STD


def training_data(dataset: str, root: Path | None = None, max_train: int | None = None,
                  max_test: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of a 28x28 gray dataset, normalised (first N of each split)."""
    load = DATASETS[dataset]
    xtr, ytr = load("train", root)
    xte, yte = load("test", root)
    xtr, ytr, xte, yte = xtr[:max_train], ytr[:max_train], xte[:max_test], yte[:max_test]
    return (normalize_gray(xtr), torch.as_tensor(ytr, dtype=torch.int64),
            normalize_gray(xte), torch.as_tensor(yte, dtype=torch.int64))


def run_inputs(name: str, weights: Path | None, dataset: str, root: Path | None, max_train: int | None,
               max_test: int | None) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor],
                                              tuple[torch.Tensor, torch.Tensor]]:
    """What a qat / prune run starts from: (float model, training set, test set), after joining the
    distributed group when run under ``torchrun``."""
    want = tuple(zoo.input_shape(name))
    init_distributed()
    xtr, ytr, xte, yte = training_data(dataset, root, max_train, max_test)
    if tuple(xtr.shape[1:]) != want:
        got = "x".join(str(d) for d in xtr.shape[1:])
        raise OptionError(f"--model {name} takes {'x'.join(str(d) for d in want)} inputs, --dataset {dataset} "
                          f"has {got} images; train a model of that input (e.g. --model cnv)")
    return start_model(name, weights), (xtr, ytr), (xte, yte)


def start_model(name: str, weights: Path | None = None) -> nn.Module:
    """The float model to train: the zoo's weights, or ``weights`` (checked for NaN/Inf/absurd values)."""
    if weights is None:
        model = zoo.load(name, pretrained=True)
    else:
        state = validate.load_state(weights, "--weights")
        model = zoo.load(name)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = " ".join(str(e).split())[:300]
            raise ModelError(f"--weights {weights}: does not match model {name} ({first})") from None
    validate.model(model, f"model {name}" if weights is None else f"--weights {weights}")
    return model.eval()


def qat_plan(name: str, model: nn.Module, sample: torch.Tensor, plan: Path | None, weight: Any, act: Any,
             weight_alt: Any = None, alt_ratio: float = 0.0, first_last_bits: int | None = 8) -> QuantPlan:
    """The plan QAT trains under: ``plan`` (a file, checked against the model) or a low-bit plan of the
    formats given; MSQ rows assigned where the plan has a second row format without rows."""
    if plan is not None:
        qplan = load_checked_plan(plan, name, capture(model, zoo.input_shape(name)))
    else:
        qplan = low_bit_plan(name, model, sample, weight, act, weight_alt=weight_alt,
                             alt_ratio=alt_ratio if weight_alt is not None else 0.0, first_last_bits=first_last_bits)
    if any(lp.weight_alt is not None and lp.alt_rows is None for _, lp in qplan.items()):
        qplan = assign_rows(model, qplan)
    return qplan


def save_qat_artifact(folder: Path, name: str, res: Any, dataset: str) -> list[Path]:
    """A ``mixq qat`` run folder as a ``mixq quantize`` artifact too (``quantized.pt``, ``summary.json``; the
    trained plain model under its plan), so ``verify``, ``export``, ``estimate``, ``rtl`` and ``search`` take it
    with ``--from``. Written by the first process of a distributed run only."""
    from mixq.artifact import save_artifact
    from mixq.data.sources import Preprocess
    from mixq.training import dist_info
    from mixq.zoo.source import ModelSource

    if dist_info()[0] != 0:
        return []
    src = ModelSource(name)
    pre = Preprocess.for_input(tuple(src.shape()))
    config = res.summary.get("config", {})
    summary = {
        "model": name, "source": src.to_dict(), "pretrained": True, "recipe": {"name": "qat", "config": config},
        # the shipped calibration images are Fashion-MNIST's: the data a later --from check reads by default
        "calibration": {"source": "shipped" if dataset == "fmnist" else None, "dataset": dataset,
                        "images": int(config.get("calib_images", 0)), "preprocess": {
                            "size": list(pre.size), "channels": pre.channels, "mean": list(pre.mean),
                            "std": list(pre.std), "resize": pre.resize}},
        "qat": {k: res.summary[k] for k in ("val_accuracy", "val_images", "steps", "train_time_s")
                if k in res.summary},
        "layers": api.layer_formats(res.model),
    }
    return save_artifact(folder, name, res.plan, {"name": "qat", "config": config}, res.model, summary, source=src)
