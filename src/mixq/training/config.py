"""`TrainConfig`: the settings of the one training loop (:func:`mixq.training.fit`), frozen and checked.

Callers with their own config (`mixq.algorithms.qat.QatConfig`, the zoo recipe of
:mod:`mixq.zoo.train`) map it onto this one; the loop reads nothing else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mixq.errors import MixqError

OPTIMIZERS = ("sgd", "adam")
#: ``seeded``: the data order of epoch e and the random draws of step s are fixed by (seed, e, s, rank), so a
#: run resumes exactly from any checkpoint; ``stream``: one generator seeded once draws the order of every
#: epoch and every augmentation in turn (the zoo recipe; not resumable)
ORDERS = ("seeded", "stream")
#: ``factor``: ``LambdaLR`` multiplies each parameter group's lr by the schedule (saved in checkpoints);
#: ``absolute``: every group's lr is set to the schedule of ``lr`` before each step (the zoo recipe)
SCHEDULES = ("factor", "absolute")


class TrainError(MixqError):
    """A training run that cannot proceed: a bad setting, a checkpoint that does not match the run."""


#: the devices a run may train on: the CPU, the current CUDA device, or CUDA device N
DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]+)?")


def device_problem(device: object) -> str | None:
    """Why ``device`` cannot train here (None: it can): not ``cpu`` / ``cuda`` / ``cuda:N``, no CUDA
    device at all, or no device N. Imports torch only for a CUDA device.

    >>> device_problem("cpu") is None, device_problem("gpu")
    (True, "must be 'cpu', 'cuda' or 'cuda:N'")
    """
    if not isinstance(device, str) or DEVICE_PATTERN.fullmatch(device) is None:
        return "must be 'cpu', 'cuda' or 'cuda:N'"
    if device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        return f"no CUDA device {index} (torch.cuda.device_count() is {count})"
    return None


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one run of :func:`mixq.training.fit`.

    SGD (Nesterov when ``momentum > 0``) or Adam; weights (``ndim > 1``) decayed, other parameters not,
    quantizer steps (parameters named ``*w_log_step`` / ``*log_scale``) at ``scale_lr`` without decay;
    linear warm-up over ``warmup_steps`` then cosine decay to ``min_lr``; distillation
    (``kd_alpha``, ``kd_temperature``) when a teacher is given; shift-and-flip augmentation;
    ``batch_size`` images per step (``drop_last``: only full batches; otherwise a last batch of at
    least 2 images is kept — BatchNorm needs two). ``threads`` / ``deterministic`` hold for the run.
    ``device``: ``cpu`` (the default), ``cuda`` or ``cuda:N`` — where the model trains (the data stays on
    the CPU, see :func:`mixq.training.fit`); a CUDA device this machine lacks is refused here.
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    scale_lr: float | None = None
    warmup_steps: int = 0
    min_lr: float = 0.0
    seed: int = 0
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0
    augment: bool = True
    channels_last: bool = True
    checkpoint_every: int = 0
    threads: int | None = None
    deterministic: bool = True
    progress: bool = True
    eval_every_epoch: bool = True
    order: str = "seeded"
    drop_last: bool = True
    schedule: str = "factor"
    device: str = "cpu"

    def __post_init__(self) -> None:
        def bad(name: str, msg: str) -> TrainError:
            return TrainError(f"{type(self).__name__}.{name}: {msg}, got {getattr(self, name)!r}")

        for name, low in (("epochs", 1), ("batch_size", 2), ("warmup_steps", 0), ("checkpoint_every", 0),
                          ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(name, f"must be an integer >= {low}")
        for name in ("lr", "momentum", "weight_decay", "min_lr", "kd_alpha", "kd_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise bad(name, "must be a finite number >= 0")
        if not self.lr > 0:
            raise bad("lr", "must be positive")
        for name, choices in (("optimizer", OPTIMIZERS), ("order", ORDERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise bad(name, f"must be one of {', '.join(choices)}")
        problem = device_problem(self.device)
        if problem is not None:
            raise bad("device", problem)
