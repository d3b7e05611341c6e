"""Algorithms (layer L5): post-training quantization (:mod:`mixq.algorithms.ptq`) and row-wise mixed
schemes (:mod:`mixq.algorithms.msq`)."""

from mixq.algorithms.msq import MSQConfig, assign_rows, msq_plan
from mixq.algorithms.ptq import RECIPES, Recipe, quantize, quantize_report

__all__ = ["RECIPES", "MSQConfig", "Recipe", "assign_rows", "msq_plan", "quantize", "quantize_report"]
