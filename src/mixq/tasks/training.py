"""What ``mixq qat`` and ``mixq prune`` train on: the labelled data, the starting float model, its plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import api
from mixq.algorithms.msq import assign_rows
from mixq.algorithms.qat import init_distributed, low_bit_plan
from mixq.data import GRAY_MEAN, GRAY_STD, normalize_gray
from mixq.data.sources import DATASET_SPLITS, Preprocess
from mixq.errors import OptionError
from mixq.graph.capture import capture
from mixq.plan import QuantPlan
from mixq.tasks.data import load_source, preprocess, recorded
from mixq.tasks.models import load_checked_plan, load_model
from mixq.zoo.source import ModelSource

#: `--dataset` names of the whole 28x28 gray datasets, and their loaders (the data sources' one table)
DATASETS = {name: load for name, (load, _) in DATASET_SPLITS.items()}
#: the normalised value of a black pixel: what random-crop padding fills with
PAD_FILL = -GRAY_MEAN / GRAY_STD


def training_data(dataset: str, root: Path | None = None, max_train: int | None = None,
                  max_test: int | None = None, pre: Preprocess | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of a 28x28 gray dataset, normalised with ``pre``'s mean and std
    (default Fashion-MNIST's, mixq's gray preset) (first N of each split)."""
    load = DATASETS[dataset]
    xtr, ytr = load("train", root)
    xte, yte = load("test", root)
    xtr, ytr, xte, yte = xtr[:max_train], ytr[:max_train], xte[:max_test], yte[:max_test]
    norm = {} if pre is None else {"mean": pre.mean[0], "std": pre.std[0]}
    return (normalize_gray(xtr, **norm), torch.as_tensor(ytr, dtype=torch.int64),
            normalize_gray(xte, **norm), torch.as_tensor(yte, dtype=torch.int64))


@dataclass(frozen=True)
class ImageOptions:
    """``--input-size`` / ``--mean`` / ``--std`` / ``--grayscale/--rgb`` of a qat / prune run (None: the model's
    default preprocessing, :func:`mixq.tasks.data.preprocess`)."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    gray: bool | None = None


@dataclass(frozen=True)
class RunInputs:
    """What a qat / prune run starts from: the float model and its source, the labelled training and test sets
    (normalised model inputs, int64 labels), the value random-crop padding fills with (a black pixel), and what
    the run records of its data (the source a later ``--from`` check reads by default, the preprocessing)."""

    model: nn.Module
    source: ModelSource
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    dataset: str
    fill: float
    calib_source: str | None
    pre: Preprocess | None


def _labelled(source: str, pre: Preprocess | None, shape: tuple[int, ...], option: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
    got = load_source(source, pre, None, option, shape)
    if got.y is None:
        raise OptionError(f"{option} {source}: no labels (give a folder of class subfolders, or an .npz with "
                          "integer labels 'y')")
    return got.x, got.y.to(torch.int64)


def labelled_data(dataset: str, shape: tuple[int, ...], root: Path | None = None, test: str | None = None,
                  max_train: int | None = None, max_test: int | None = None, image: ImageOptions = ImageOptions()
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], Preprocess | None]:
    """``(train, test, preprocessing)`` of ``--dataset``: Fashion-MNIST / MNIST (their test splits), or a folder
    of class subfolders / an .npz with labels ``y``, preprocessed for a model of input ``shape`` (``image``: the
    user's preprocessing options); its test set ``test`` (a source of the same kinds), else a seeded tenth of it
    held out. Each cut to its first N."""
    pre: Preprocess | None
    if dataset in DATASETS:
        if shape != (1, 28, 28):
            raise OptionError(f"--dataset {dataset} has 1x28x28 images, the model takes "
                              f"{'x'.join(map(str, shape))} inputs; give --dataset a folder of class subfolders or "
                              "an .npz of its inputs")
        given = [o for o, v in (("--input-size", image.size), ("--grayscale/--rgb", image.gray)) if v is not None]
        if given:
            raise OptionError(f"{', '.join(given)}: --dataset {dataset} is 28x28 gray images as the model takes "
                              "them; only --mean / --std apply")
        pre = preprocess(shape, "the model", mean=image.mean, std=image.std)
        xtr, ytr, xte, yte = training_data(dataset, root, max_train, max_test, pre)
        if test is not None:
            xte, yte = _labelled(test, pre, shape, "--test-data")
    else:
        if root is not None:
            raise OptionError(f"--data-root: only for --dataset {' / '.join(DATASETS)}, not {dataset}")
        pre = preprocess(shape, "the model", image.size, image.mean, image.std, image.gray)
        xtr, ytr = _labelled(dataset, pre, shape, "--dataset")
        if test is not None:
            xte, yte = _labelled(test, pre, shape, "--test-data")
        else:
            if xtr.shape[0] < 2:
                raise OptionError(f"--dataset {dataset}: {xtr.shape[0]} labelled input(s), too few to hold a test "
                                  "set out; give more, or --test-data")
            order = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(0))
            held = order[: max(1, xtr.shape[0] // 10)].sort().values
            kept = order[max(1, xtr.shape[0] // 10):].sort().values
            xte, yte, xtr, ytr = xtr[held], ytr[held], xtr[kept], ytr[kept]
    return (xtr[:max_train], ytr[:max_train]), (xte[:max_test], yte[:max_test]), pre


def run_inputs(src: ModelSource, dataset: str, root: Path | None, max_train: int | None, max_test: int | None,
               test: str | None = None, image: ImageOptions = ImageOptions()) -> RunInputs:
    """The model (its real weights where the source has them: a zoo model's, ``--weights``, a builder's own)
    and the data of a qat / prune run, after joining the distributed group when run under ``torchrun``. Labels
    the model cannot output are refused."""
    shape = tuple(src.shape())
    init_distributed()
    train, held, pre = labelled_data(dataset, shape, root, test, max_train, max_test, image)
    model = load_model(src, pretrained=True, fallback=False)
    with torch.no_grad():
        outputs = model(train[0][:1]).reshape(1, -1).shape[1]
    top = int(max(train[1].max(), held[1].max()))
    if top >= outputs:
        raise OptionError(f"--dataset {dataset}: label {top} (of {top + 1} classes or more) but {src.name} has "
                          f"{outputs} outputs")
    # a black pixel, normalised (PAD_FILL for Fashion-MNIST / MNIST, whose preset has GRAY_MEAN / GRAY_STD)
    fill = float(sum(-m / d for m, d in zip(pre.mean, pre.std, strict=True)) / len(pre.mean)) if pre else 0.0
    # what a later --from reads: the bundled Fashion-MNIST images, MNIST's train split, or the user's source
    calib = {"fmnist": "shipped", "mnist": "mnist" if root is None else None}.get(dataset, dataset)
    return RunInputs(model, src, train, held, dataset, fill, calib, pre)


def qat_plan(name: str, model: nn.Module, sample: torch.Tensor, plan: Path | None, weight: Any, act: Any,
             weight_alt: Any = None, alt_ratio: float = 0.0, first_last_bits: int | None = 8) -> QuantPlan:
    """The plan QAT trains under: ``plan`` (a file, checked against the model) or a low-bit plan of the
    formats given; MSQ rows assigned where the plan has a second row format without rows."""
    if plan is not None:
        qplan = load_checked_plan(plan, name, capture(model, tuple(sample.shape[1:])))
    else:
        qplan = low_bit_plan(name, model, sample, weight, act, weight_alt=weight_alt,
                             alt_ratio=alt_ratio if weight_alt is not None else 0.0, first_last_bits=first_last_bits)
    if any(lp.weight_alt is not None and lp.alt_rows is None for _, lp in qplan.items()):
        qplan = assign_rows(model, qplan)
    return qplan


def save_run_artifact(folder: Path, inputs: RunInputs, res: Any, recipe: str = "qat") -> list[Path]:
    """A ``mixq qat`` / ``prune`` run folder as a ``mixq quantize`` artifact too (``quantized.pt``,
    ``summary.json``; the trained plain model under its plan — ``res`` a `QatResult` —, the model's source), so
    ``verify``, ``export``, ``estimate``, ``rtl`` and ``search`` take it with ``--from``. Written by the first
    process of a distributed run only."""
    from mixq.artifact import save_artifact
    from mixq.training import dist_info

    if dist_info()[0] != 0:
        return []
    src, pre = inputs.source, inputs.pre
    config = res.summary.get("config", {})
    summary = {
        "model": src.name, "source": src.to_dict(), "pretrained": True, "recipe": {"name": recipe, "config": config},
        # the data a later --from check reads by default (the shipped calibration images are Fashion-MNIST's)
        "calibration": {"source": recorded(inputs.calib_source), "dataset": inputs.dataset,
                        "images": int(config.get("calib_images", 0)),
                        "preprocess": None if pre is None else pre.to_dict()},
        "qat": {k: res.summary[k] for k in ("val_accuracy", "val_images", "steps", "train_time_s")
                if k in res.summary},
        "layers": api.layer_formats(res.model),
    }
    return save_artifact(folder, src.name, res.plan, {"name": recipe, "config": config}, res.model, summary,
                         source=src)
