"""Bit-exact integer inference (layer L4): integer model, engine, hardware-faithful fake quant."""

from mixq.engine.convert import EngineConfig, to_integer
from mixq.engine.model import IntModel, IntNode
from mixq.engine.run import IntEngine, IntResult, run

__all__ = ["EngineConfig", "IntEngine", "IntModel", "IntNode", "IntResult", "run", "to_integer"]
