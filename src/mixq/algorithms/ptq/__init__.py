"""Post-training quantization (layer L5): calibration, BN folding and re-estimation, cross-layer
equalization with bias absorption, bias correction, AdaRound, GPTQ, BRECQ, network-wise distillation,
data-free calibration, and named recipes that chain them (:func:`quantize`)."""

from mixq.algorithms.ptq.adaround import AdaRoundConfig, adaround, adaround_layer, optimize_rounding, rounding_grid
from mixq.algorithms.ptq.bias_correction import (
    analytic_bias_correction,
    clipped_normal_moments,
    empirical_bias_correction,
    expected_input_means,
)
from mixq.algorithms.ptq.blocks import find_blocks
from mixq.algorithms.ptq.bn_reestimate import reestimate_bn, restore_channel_stats
from mixq.algorithms.ptq.brecq import BRECQ_BUDGETS, BrecqConfig, brecq, brecq_budget
from mixq.algorithms.ptq.calibrate import activation_scales, calibrate_activations
from mixq.algorithms.ptq.cle import (
    ChannelStats,
    ClippedReLU,
    EqualizationPair,
    absorb_high_bias,
    bn_output_stats,
    cross_layer_equalize,
    equalization_scales,
    find_pairs,
)
from mixq.algorithms.ptq.datafree import DataFreeConfig, synthesize_inputs
from mixq.algorithms.ptq.distill import DistillConfig, distill
from mixq.algorithms.ptq.gptq import GPTQConfig, gptq, gptq_layer, gptq_quantize
from mixq.algorithms.ptq.recipes import RECIPES, PTQResult, Recipe, get_recipe, quantize, quantize_report

__all__ = [
    "RECIPES",
    "AdaRoundConfig",
    "BRECQ_BUDGETS",
    "BrecqConfig",
    "ChannelStats",
    "ClippedReLU",
    "DataFreeConfig",
    "DistillConfig",
    "GPTQConfig",
    "EqualizationPair",
    "PTQResult",
    "Recipe",
    "absorb_high_bias",
    "activation_scales",
    "adaround",
    "adaround_layer",
    "analytic_bias_correction",
    "bn_output_stats",
    "brecq",
    "brecq_budget",
    "calibrate_activations",
    "clipped_normal_moments",
    "cross_layer_equalize",
    "distill",
    "empirical_bias_correction",
    "equalization_scales",
    "expected_input_means",
    "find_blocks",
    "find_pairs",
    "get_recipe",
    "gptq",
    "gptq_layer",
    "gptq_quantize",
    "optimize_rounding",
    "quantize",
    "quantize_report",
    "reestimate_bn",
    "restore_channel_stats",
    "rounding_grid",
    "synthesize_inputs",
]
