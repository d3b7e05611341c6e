"""QAT and pruned fine-tuning on the one training loop (:func:`mixq.training.fit`).

:func:`fit` runs a `QatConfig` on :mod:`mixq.training`: the QAT layers' gradient
quantization (its noise seeded per step from ``(seed, epoch, step, rank)``, so a
resumed run draws what an uninterrupted one draws) and channels-last forward are
switched on for the run and off after it; the checkpoint records the `QatConfig`,
the plan and a fingerprint of the data, and a resume with another trajectory,
plan or data raises `QatError`. ``QatConfig.device`` is where it trains; the model comes back on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.algorithms.qat.checkpoint import check_config, plan_record
from mixq.algorithms.qat.config import QatConfig
from mixq.algorithms.qat.modules import set_channels_last, set_grad_quant
from mixq.plan import QuantPlan
from mixq.training import (
    CheckpointHook,
    Checkpointing,
    FitResult,
    accuracy,
    data_fingerprint,
    dist_info,
    epoch_order,
    init_distributed,
)
from mixq.training import fit as train_loop
from mixq.training.functional import mix_seed

__all__ = ["CheckpointHook", "FitResult", "accuracy", "dist_info", "epoch_order", "fit", "init_distributed"]


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: QatConfig, checkpoint: Path, *,
        teacher: nn.Module | None = None, masks: Mapping[str, torch.Tensor] | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, resume: bool = False,
        on_checkpoint: CheckpointHook | None = None, fill: float = 0.0, desc: str = "qat",
        plan: QuantPlan | None = None, data_meta: dict[str, Any] | None = None) -> FitResult:
    """Train ``model`` in place on ``(x, y)`` for ``cfg.epochs``, checkpointing to ``checkpoint``.

    ``masks`` maps parameter names to 0/1 tensors (pruned fine-tuning); ``teacher``
    provides distillation targets when ``cfg.kd_alpha > 0``; ``fill`` is the input value
    of the border pixels shift augmentation brings in. With ``resume`` and an existing
    checkpoint the run continues from it; a checkpoint of a run with another trajectory,
    another ``plan`` or other training data (``x``, ``y``, ``data_meta``) raises `QatError`.
    A non-finite loss or non-finite weights stop the run with `NumericError`, the last
    checkpoint written staying as it was. The run trains on ``cfg.device``; ``model`` is on the CPU
    afterwards (see :func:`mixq.training.fit`).
    """
    ckpt = Checkpointing(path=checkpoint, config=cfg.to_dict(), check_config=check_config(cfg), resume=resume,
                         plan=plan_record(plan) if plan is not None else None,
                         data=data_fingerprint(x, y, data_meta), on_save=on_checkpoint)
    grad_gen = torch.Generator(device=cfg.device)  # the noise is drawn where the gradients are

    def seed_grad_noise(epoch: int, step: int, rank: int) -> None:
        grad_gen.manual_seed(mix_seed(cfg.seed, epoch, step, rank, 1))

    set_grad_quant(model, cfg.grad_bits, grad_gen if cfg.grad_bits else None)
    set_channels_last(model, cfg.channels_last and x.dim() == 4)
    try:
        return train_loop(model, x, y, cfg.train_config(), checkpoint=ckpt, teacher=teacher, masks=masks, val=val,
                          fill=fill, before_step=seed_grad_noise, desc=desc, config_name="QatConfig",
                          run=f"{desc} run in {checkpoint.parent}")
    finally:
        set_grad_quant(model, None, None)
        set_channels_last(model, False)
