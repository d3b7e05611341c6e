"""The one training loop of mixq (base layer: torch and the base modules only), shared by the zoo's
training from scratch (:mod:`mixq.zoo.train`), QAT and pruned fine-tuning (:mod:`mixq.algorithms.qat`,
:mod:`mixq.algorithms.prune`).

* :func:`fit` — one epoch loop: SGD/Adam, warm-up + cosine schedule, distillation, the one
  augmentation (:func:`augment_shift_flip`), masks, checkpoints with exact resume, DDP, progress;
* :class:`TrainConfig` — its settings; :class:`Checkpointing` — where it checkpoints and what a resume
  must match (:mod:`mixq.training.checkpoint`);
* :func:`accuracy` — the one top-1 accuracy, in percent; :func:`torch_settings` — thread count and
  deterministic algorithms for a block.
"""

from mixq.training.checkpoint import Position, data_difference, data_fingerprint, nonfinite_tensors
from mixq.training.config import TrainConfig, TrainError, device_problem
from mixq.training.functional import (
    accuracy,
    augment_shift_flip,
    cosine_lr,
    epoch_order,
    kd_loss,
    top1_correct,
    torch_settings,
)
from mixq.training.loop import (
    CheckpointHook,
    Checkpointing,
    FitResult,
    StepHook,
    dist_info,
    fit,
    init_distributed,
    make_optimizer,
)

__all__ = [
    "CheckpointHook",
    "Checkpointing",
    "FitResult",
    "Position",
    "StepHook",
    "TrainConfig",
    "TrainError",
    "accuracy",
    "augment_shift_flip",
    "cosine_lr",
    "data_difference",
    "data_fingerprint",
    "device_problem",
    "dist_info",
    "epoch_order",
    "fit",
    "init_distributed",
    "kd_loss",
    "make_optimizer",
    "nonfinite_tensors",
    "top1_correct",
    "torch_settings",
]
