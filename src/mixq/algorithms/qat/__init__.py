"""Quantization-aware training (layer L5): STE, LSQ, DoReFa, XNOR binary weights, distillation,
BN folding during training, exact resume from checkpoints, DistributedDataParallel — on the one
training loop of :mod:`mixq.training` (whose ``cosine_lr``, ``kd_loss`` and ``accuracy`` are re-exported).

Entry points: :func:`train_qat` (one call from a float model and a plan to a
trained quantized model and its files), :func:`low_bit_plan` (the default
first/last-layer-at-8-bits policy), :func:`load_result` (read a run folder back).
"""

from mixq.algorithms.qat.checkpoint import Position, read_checkpoint
from mixq.algorithms.qat.config import QatConfig, QatError
from mixq.algorithms.qat.functional import (
    dorefa_weight,
    lsq_act,
    lsq_weight,
    quant_grad,
    quantize_gradient,
    xnor_alpha,
    xnor_weight,
)
from mixq.algorithms.qat.modules import QatAct, QatConv2d, QatLinear, export_plain, qat_layers
from mixq.algorithms.qat.prepare import low_bit_plan, prepare_qat, signed_input_layers
from mixq.algorithms.qat.result import load_quantized, load_result, save_result
from mixq.algorithms.qat.run import QatResult, train_qat
from mixq.algorithms.qat.trainer import FitResult, accuracy, epoch_order, fit, init_distributed
from mixq.training import cosine_lr, device_problem, kd_loss

__all__ = [
    "FitResult",
    "Position",
    "QatAct",
    "QatConfig",
    "QatConv2d",
    "QatError",
    "QatLinear",
    "QatResult",
    "accuracy",
    "cosine_lr",
    "device_problem",
    "dorefa_weight",
    "epoch_order",
    "export_plain",
    "fit",
    "init_distributed",
    "kd_loss",
    "load_quantized",
    "load_result",
    "low_bit_plan",
    "lsq_act",
    "lsq_weight",
    "prepare_qat",
    "qat_layers",
    "quant_grad",
    "quantize_gradient",
    "read_checkpoint",
    "save_result",
    "signed_input_layers",
    "train_qat",
    "xnor_alpha",
    "xnor_weight",
]
