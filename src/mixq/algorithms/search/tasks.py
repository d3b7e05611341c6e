"""The bundled search tasks: a zoo model, its calibration images and the figure to keep high.

* ``cnv``: Fashion-MNIST; calibration on the shipped training images, top-1 accuracy on
  the shipped test subset (or the full test split with ``full_test``).
* ``mobilenet_v2``: ImageNet-normalised natural photos (`mixq.data.calibration_set`);
  no labels ship, so the figure is top-1 agreement with the float model on held-out crops.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixq import data, zoo
from mixq.algorithms.search.evaluate import AccuracyEval, AgreementEval, EvalFn
from mixq.errors import MixqError

CNV_CALIB = Path(data.__file__).parent / "assets" / "fmnist_train_calib.npz"
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
        images, _ = data.load_fmnist_subset(CNV_CALIB)
        if full_test:
            x, y = data.load_fashion_mnist("test")
        else:
            x, y = data.load_fmnist_subset()
        xs = data.normalize_gray(x)[:eval_images]
        ys = torch.as_tensor(y, dtype=torch.int64)[:eval_images]
        return model, data.normalize_gray(images)[:calib_images], AccuracyEval(xs, ys)
    calib = data.calibration_set(n=calib_images, seed=0)
    held = data.calibration_set(n=eval_images, seed=1)
    return model, calib, AgreementEval.of(model, held)
