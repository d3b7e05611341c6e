"""Quantized layers: float op + weight and activation quantizers from a `LayerPlan`."""

from mixq.nn.modules import QUANT_LAYERS, QAct, QConv2d, QLinear, quantized_layer
from mixq.nn.shape import ZeroInsert

__all__ = ["QUANT_LAYERS", "QAct", "QConv2d", "QLinear", "quantized_layer", "ZeroInsert"]
