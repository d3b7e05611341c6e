"""Quantized layers: float op + weight and activation quantizers from a `LayerPlan`."""

from mixq.nn.fbs import FBSConv2d
from mixq.nn.lut import LUT_FUNCTIONS, QLutAct, is_lut_activation
from mixq.nn.modules import QUANT_LAYERS, QAct, QConv2d, QLinear, float_weights, quantized_layer
from mixq.nn.shape import ZeroInsert

__all__ = ["FBSConv2d", "LUT_FUNCTIONS", "QUANT_LAYERS", "QAct", "QConv2d", "QLinear", "QLutAct", "ZeroInsert",
           "float_weights", "is_lut_activation", "quantized_layer"]
