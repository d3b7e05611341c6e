"""Reproducible training of the zoo CNV on Fashion-MNIST (produces ``weights/cnv_fmnist.pt``).

Recipe (all fixed by the arguments, nothing by the environment):

* data: the full Fashion-MNIST train set (60k) from the Debian package folder
  or ``data_root``, normalised by :func:`mixq.data.normalize_gray`;
* augmentation: a random shift of up to 2 pixels each way (zero-padded in
  pixel space) and a random left-right flip, per image;
* SGD with Nesterov momentum 0.9, weight decay on conv/linear weights only,
  learning rate warmed up linearly over the first 300 steps then cosine-decayed
  to 0 per step; cross-entropy loss;
* determinism: ``torch.manual_seed(seed)`` for the initialisation, a separate
  seeded generator for shuffling and augmentation,
  ``torch.use_deterministic_algorithms(True)`` and a fixed thread count during
  the run (both restored afterwards). The same seed, arguments, thread count
  and torch build give bit-identical weights.

The loop is the one training loop, :func:`mixq.training.fit`, in its ``stream`` order
(one generator seeded once draws every epoch's order and every augmentation, in
turn) with the ``absolute`` schedule (each step's learning rate set from the
cosine of ``lr``) and the last partial batch kept: the recipe the shipped weights
were trained with, draw for draw.

Safety: the arguments are checked first (`OptionError` naming the one out of
range); a non-finite loss stops the run at once with `NumericError` (before the
optimizer step), and the weights are checked for NaN/Inf before they are
written, so an existing weights file is never replaced by a diverged model.
Progress goes through :mod:`mixq.progress` (a task advancing per step with the
running loss, a line per epoch with the loss and the test accuracy); ``progress=False``
reports nothing.

The state dict is written atomically (:func:`mixq.io.atomic_write_torch`),
with a JSON file next to it (same stem) that records the accuracy on the full
10k test set and on the shipped 2000-image subset, the arguments, the torch
version, the wall time, the file's SHA-256 and the ``mixq train`` command that
reproduces it.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq import training, validate
from mixq.data import GRAY_MEAN, GRAY_STD, load_fashion_mnist, load_fmnist_subset, normalize_gray
from mixq.errors import NumericError, OptionError
from mixq.io import atomic_write_json, atomic_write_torch
from mixq.training import device_problem
from mixq.zoo.cnv import CNV_MACS, WEIGHTS_PATH, cnv

__all__ = ["DEFAULTS", "evaluate", "train_cnv"]

DEFAULTS: dict[str, Any] = {"epochs": 12, "seed": 0, "batch_size": 128, "lr": 0.05}
WARMUP_STEPS = 300
#: the normalised value of a black pixel: what the shift augmentation brings in
BLACK = -GRAY_MEAN / GRAY_STD


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy as a fraction (the unit of the weights file's metadata) of ``model`` on uint8
    images normalised by ``normalize_gray``; counted by :func:`mixq.training.top1_correct`."""
    y = torch.as_tensor(labels, dtype=torch.int64)
    return training.top1_correct(model, normalize_gray(images), y, batch_size) / max(1, len(y))


def _command(out_path: Path, epochs: int, seed: int, data_root: str | Path | None, batch_size: int, lr: float,
             device: str = "cpu") -> str:
    cmd = f"mixq train --epochs {epochs} --seed {seed} --out {out_path}"
    if device != "cpu":
        cmd += f" --device {device}"
    if batch_size != DEFAULTS["batch_size"]:
        cmd += f" --batch-size {batch_size}"
    if lr != DEFAULTS["lr"]:
        cmd += f" --lr {lr}"
    if data_root is not None:
        cmd += f" --data-root {data_root}"
    return cmd


def train_cnv(
    out_path: str | Path = WEIGHTS_PATH,
    epochs: int = DEFAULTS["epochs"],
    seed: int = DEFAULTS["seed"],
    data_root: str | Path | None = None,
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    progress: bool = True,
    *,
    weight_decay: float = 5e-4,
    augment: bool = True,
    threads: int = 2,
    max_train: int | None = None,
    max_test: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the CNV on Fashion-MNIST, write its state dict to ``out_path`` and metadata next to it.

    ``max_train`` / ``max_test`` limit the images used (the first N; for smoke
    tests, recorded in the metadata). ``device`` (``cpu``, ``cuda``, ``cuda:N``) is where the model trains
    (:func:`mixq.training.fit`; evaluated and written from the CPU; bit-identical weights are promised on
    the CPU only). Returns the metadata dict that is also
    written to ``out_path.with_suffix(".json")``. Missing data raises
    :class:`DataError`; an argument out of range :class:`OptionError`; a loss or
    weights turning NaN/Inf :class:`NumericError` (nothing is written then).
    """
    _check_args(out_path, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, threads=threads,
                max_train=max_train, max_test=max_test)
    problem = device_problem(device)
    if problem is not None:
        raise OptionError(f"train_cnv device: {problem}, got {device!r}")
    out = Path(out_path)
    x_train, y_train = load_fashion_mnist("train", data_root)
    x_test, y_test = load_fashion_mnist("test", data_root)
    x_sub, y_sub = load_fmnist_subset()
    x_train, y_train = x_train[:max_train], y_train[:max_train]
    x_test, y_test = x_test[:max_test], y_test[:max_test]
    n = len(y_train)
    total = epochs * math.ceil(n / batch_size)
    cfg = training.TrainConfig(
        epochs=epochs, batch_size=min(batch_size, n), lr=lr, momentum=0.9, weight_decay=weight_decay,
        warmup_steps=min(WARMUP_STEPS, total // 10), seed=seed, augment=augment, threads=threads,
        progress=progress, eval_every_epoch=progress, order="stream", drop_last=False, schedule="absolute",
        device=device)
    kept = f"the existing {out} is kept" if out.exists() else f"nothing was written to {out}"

    t0 = time.perf_counter()
    with training.torch_settings(threads):
        torch.manual_seed(seed)
        model = cnv().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        val = (normalize_gray(x_test), torch.as_tensor(y_test, dtype=torch.int64)) if progress else None
        res = training.fit(model, normalize_gray(x_train), torch.as_tensor(y_train, dtype=torch.int64), cfg,
                           val=val, fill=BLACK, desc="train cnv", run=f"train_cnv ({out})", kept=kept)
        model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # file strides
        train_time = time.perf_counter() - t0
        test_acc = evaluate(model, x_test, y_test)
        subset_acc = evaluate(model, x_sub, y_sub)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    bad = validate.nonfinite(state)
    if bad:
        raise NumericError(f"train_cnv ({out}): the trained weights {bad[0]} hold NaN/Inf; not written, {kept}")
    blob = atomic_write_torch(out, state)
    meta: dict[str, Any] = {
        "model": "cnv",
        "dataset": "Fashion-MNIST",
        "test_accuracy": test_acc,
        "test_images": int(len(y_test)),
        "subset_accuracy": subset_acc,
        "subset_images": int(len(y_sub)),
        "train_images": int(n),
        "final_train_loss": res.history[-1]["train_loss"],
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "augment": augment,
        "threads": threads,
        "max_train": max_train,
        "max_test": max_test,
        "normalisation": {"mean": GRAY_MEAN, "std": GRAY_STD},
        "params": int(sum(p.numel() for p in model.parameters())),
        "macs": CNV_MACS,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "train_wall_time_s": round(train_time - res.eval_time_s, 1),
        "weights_file": out.name,
        "weights_bytes": len(blob),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "device": device,
        "command": _command(out, epochs, seed, data_root, batch_size, lr, device),
    }
    atomic_write_json(out.with_suffix(".json"), meta)
    return meta


#: train_cnv's count arguments and their minimum (batch_size: BatchNorm needs two samples)
_COUNTS = {"epochs": 1, "batch_size": 2, "threads": 1, "max_train": 2, "max_test": 1}
#: its real arguments: finite and > 0 (False) or >= 0 (True)
_REALS = {"lr": False, "weight_decay": True}
_OPTIONAL = {"max_train", "max_test"}


def _check_args(out_path: str | Path, **args: Any) -> None:
    """`OptionError` naming the first argument of :func:`train_cnv` out of its range (``None``: not given)."""
    for name, v in args.items():
        where = f"train_cnv {name}"
        if v is None and name not in _OPTIONAL:
            raise OptionError(f"{where}: must be given (writing {out_path})")
        if name in _COUNTS:
            validate.count(where, v, _COUNTS[name])
        else:
            validate.positive(where, v, allow_zero=_REALS[name])
