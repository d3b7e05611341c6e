"""The FPGA hardware model (layer L4, no torch): parts, per-PE costs, architecture templates.

* :mod:`mixq.hw.parts`     — part catalog (`get_part`, `PARTS`)
* :mod:`mixq.hw.kinds`     — the kinds as data: `PE_KINDS` (one `PeKind` per PE kind: core, products,
  product width, cost features, DSP rule, weight decoding), `WEIGHT_KINDS` (format -> lane),
  `STREAM_OPS` / `COMPUTE_OPS` (operator kinds); :mod:`mixq.hw.bits` — the bit arithmetic they use
* :mod:`mixq.hw.pe`        — `PeConfig`, the PE description shared with :mod:`mixq.rtl.pe`
* :mod:`mixq.hw.cost`      — `CostModel` (fitted LUT/FF coefficients, DSP/BRAM rules), `Resources`
* :mod:`mixq.hw.fit` — the fit of the coefficients to synthesis records
* :mod:`mixq.hw.streaming`, :mod:`mixq.hw.overlay` — the templates; :mod:`mixq.hw.estimate` — `estimate`
"""

from mixq.hw.cost import CostModel, Resources
from mixq.hw.estimate import Estimate, LayerEstimate, apply_folding, estimate, peak_macs
from mixq.hw.parts import PARTS, Part, get_part, known_parts
from mixq.hw.pe import PeConfig
from mixq.hw.units import ArchOptions

__all__ = [
    "PARTS", "ArchOptions", "CostModel", "Estimate", "LayerEstimate", "Part", "PeConfig", "Resources",
    "apply_folding", "estimate", "get_part", "known_parts", "peak_macs",
]
