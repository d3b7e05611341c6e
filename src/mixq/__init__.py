"""mixq: FPGA-centric hardware/software co-design of quantized CNNs."""

from mixq.errors import MixqError

__version__ = "0.1.0"

__all__ = ["MixqError", "__version__"]
