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

Safety: the arguments are checked first (`OptionError` naming the one out of
range); a non-finite loss stops the run at once with `NumericError` (before the
optimizer step), and the weights are checked for NaN/Inf before they are
written, so an existing weights file is never replaced by a diverged model.
Progress goes through :mod:`mixq.progress` (a task advancing per step with the
running loss, a line per epoch with the loss and the test accuracy); ``progress=False``
reports nothing.

The state dict is written atomically (temporary file, then ``os.replace``),
with a JSON file next to it (same stem) that records the accuracy on the full
10k test set and on the shipped 2000-image subset, the arguments, the torch
version, the wall time, the file's SHA-256 and the ``mixq train`` command that
reproduces it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixq import progress as progress_api
from mixq import validate
from mixq.data import GRAY_MEAN, GRAY_STD, load_fashion_mnist, load_fmnist_subset, normalize_gray
from mixq.errors import NumericError, OptionError
from mixq.zoo.cnv import CNV_MACS, WEIGHTS_PATH, cnv

__all__ = ["DEFAULTS", "evaluate", "train_cnv"]

DEFAULTS: dict[str, Any] = {"epochs": 12, "seed": 0, "batch_size": 128, "lr": 0.05}
WARMUP_STEPS = 300
SHIFT = 2


@contextmanager
def torch_settings(threads: int | None, deterministic: bool = True) -> Iterator[None]:
    """A thread count (``None``: leave it) and deterministic algorithms for the duration of the block
    (also used by QAT); both restored afterwards."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift (up to ``SHIFT`` px, black fill) and left-right flip of a (B, 1, H, W) batch."""
    b, _, h, w = x.shape
    black = -GRAY_MEAN / GRAY_STD
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=black)
    dy = torch.randint(0, 2 * SHIFT + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * SHIFT + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    out = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images normalised by ``normalize_gray``."""
    model.eval()
    x, y = normalize_gray(images), torch.as_tensor(labels, dtype=torch.int64)
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(y))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped files must be world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _command(out_path: Path, epochs: int, seed: int, data_root: str | Path | None, batch_size: int, lr: float) -> str:
    cmd = f"mixq train --epochs {epochs} --seed {seed} --out {out_path}"
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
) -> dict[str, Any]:
    """Train the CNV on Fashion-MNIST, write its state dict to ``out_path`` and metadata next to it.

    ``max_train`` / ``max_test`` limit the images used (the first N; for smoke
    tests, recorded in the metadata). Returns the metadata dict that is also
    written to ``out_path.with_suffix(".json")``. Missing data raises
    :class:`DataError`; an argument out of range :class:`OptionError`; a loss or
    weights turning NaN/Inf :class:`NumericError` (nothing is written then).
    """
    _check_args(out_path, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, threads=threads,
                max_train=max_train, max_test=max_test)
    out = Path(out_path)
    x_train, y_train = load_fashion_mnist("train", data_root)
    x_test, y_test = load_fashion_mnist("test", data_root)
    x_sub, y_sub = load_fmnist_subset()
    x_train, y_train = x_train[:max_train], y_train[:max_train]
    x_test, y_test = x_test[:max_test], y_test[:max_test]

    t0 = time.perf_counter()
    with torch_settings(threads):
        torch.manual_seed(seed)
        model = cnv().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        gen = torch.Generator().manual_seed(seed)
        xt, yt = normalize_gray(x_train), torch.as_tensor(y_train, dtype=torch.int64)
        n = len(yt)
        steps_per_epoch = math.ceil(n / batch_size)
        total = epochs * steps_per_epoch
        warmup = min(WARMUP_STEPS, total // 10)

        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            momentum=0.9,
            nesterov=True,
        )

        def lr_at(step: int) -> float:
            if step < warmup:
                return lr * (step + 1) / warmup
            return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        kept = f"the existing {out} is kept" if out.exists() else f"nothing was written to {out}"
        step, last_loss, eval_time = 0, float("nan"), 0.0
        with progress_api.task("train cnv", total=total, enabled=progress) as bar:
            for epoch in range(epochs):
                model.train()
                perm = torch.randperm(n, generator=gen)
                loss_sum, seen = 0.0, 0
                for i in range(0, n, batch_size):
                    idx = perm[i : i + batch_size]
                    if len(idx) < 2:  # BatchNorm needs two samples
                        continue
                    xb = xt[idx]
                    if augment:
                        xb = _augment(xb, gen)
                    xb = xb.contiguous(memory_format=torch.channels_last)
                    for g in opt.param_groups:
                        g["lr"] = lr_at(step)
                    loss = F.cross_entropy(model(xb), yt[idx])
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise NumericError(
                            f"train_cnv ({out}): the training loss is {value} at epoch {epoch + 1}/{epochs}, "
                            f"step {i // batch_size + 1}/{steps_per_epoch} (global step {step + 1}); stopped before "
                            f"the optimizer step, {kept} (lower --lr?)")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    loss_sum += value * len(idx)
                    seen += len(idx)
                    bar.advance(epoch=f"{epoch + 1}/{epochs}", loss=round(loss_sum / seen, 4))
                last_loss = loss_sum / max(1, seen)
                if progress:  # the test accuracy costs no random draw: the weights do not depend on it
                    t_eval = time.perf_counter()
                    acc = evaluate(model, x_test, y_test)
                    eval_time += time.perf_counter() - t_eval
                    progress_api.log("train cnv epoch", epoch=f"{epoch + 1}/{epochs}", loss=round(last_loss, 4),
                                     val_accuracy=round(100 * acc, 2))
        model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        train_time = time.perf_counter() - t0 - eval_time
        test_acc = evaluate(model, x_test, y_test)
        subset_acc = evaluate(model, x_sub, y_sub)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    bad = validate.nonfinite(state)
    if bad:
        raise NumericError(f"train_cnv ({out}): the trained weights {bad[0]} hold NaN/Inf; not written, {kept}")
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    _atomic_write(out, blob)
    meta: dict[str, Any] = {
        "model": "cnv",
        "dataset": "Fashion-MNIST",
        "test_accuracy": test_acc,
        "test_images": int(len(y_test)),
        "subset_accuracy": subset_acc,
        "subset_images": int(len(y_sub)),
        "train_images": int(n),
        "final_train_loss": last_loss,
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
        "train_wall_time_s": round(train_time, 1),
        "weights_file": out.name,
        "weights_bytes": len(blob),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "command": _command(out, epochs, seed, data_root, batch_size, lr),
    }
    _atomic_write(out.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
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
