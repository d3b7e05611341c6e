"""Per-PE resource model: LUTs and FFs from fitted coefficients, DSPs and block RAM by rule.

LUT, FF and CARRY4 counts of a PE are linear in a handful of structural features of the
circuit :mod:`mixq.rtl.pe` generates (lane bits, shifter bits, adder-tree bits,
accumulator bits, ...); the coefficients are fitted per PE kind to
``yosys synth_xilinx`` counts (:mod:`mixq.hw.fit`, ``mixq calibrate-hw``)
and shipped in ``mixq/hw/data/coefficients.json`` (carry chains through :meth:`CostModel.carry`,
beside :class:`Resources`). DSP counts follow the yosys ``mul2dsp`` rule exactly on the
product's own width (:func:`mixq.hw.pe.mul_dsps`: none under 9 bits), block RAM the
primitive shapes (:mod:`mixq.hw.memory`).

>>> m = CostModel.default()
>>> m.pe(PeConfig("fixed_dsp2", 4, 4, simd=4, acc_len=1024)).dsp
4.0
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources as ilr
from typing import Any, NamedTuple

from mixq.errors import HardwareError
from mixq.hw.kinds import PE_KINDS
from mixq.hw.pe import PeConfig, shift_range

FITTED = ("lut", "ff", "carry")  # fitted per kind; "carry" (CARRY4 chains) beside Resources, not in it


class Resources(NamedTuple):
    """An amount of FPGA resources (``bram`` in the part's native blocks: 18-Kb halves on Xilinx).

    An immutable named tuple (cheap to create: the folding optimizer makes many); ``+`` adds
    and ``*`` scales element-wise.
    """

    lut: float = 0.0
    ff: float = 0.0
    dsp: float = 0.0
    bram: float = 0.0
    uram: float = 0.0

    def __add__(self, o: object) -> Resources:  # type: ignore[override]
        if not isinstance(o, Resources):
            return NotImplemented
        return Resources(self[0] + o[0], self[1] + o[1], self[2] + o[2], self[3] + o[3], self[4] + o[4])

    def __mul__(self, k: object) -> Resources:  # type: ignore[override]
        if not isinstance(k, int | float):
            return NotImplemented
        return Resources(self[0] * k, self[1] * k, self[2] * k, self[3] * k, self[4] * k)

    def __rmul__(self, k: object) -> Resources:  # type: ignore[override]
        return self.__mul__(k)

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(self)

    def fits(self, budget: Resources) -> bool:
        return all(u <= b + 1e-9 for u, b in zip(self, budget, strict=True))

    def to_dict(self) -> dict[str, float]:  # type: ignore[override]
        return {n: round(float(v), 1) for n, v in zip(self._fields, self, strict=True)}

    @staticmethod
    def total(items: Any) -> Resources:
        acc = [0.0] * 5
        for r in items:
            for i in range(5):
                acc[i] += r[i]
        return Resources(*acc)


RESOURCE_NAMES: tuple[str, ...] = Resources._fields


def features(cfg: PeConfig) -> dict[str, float]:
    """Structural features of the generated circuit; LUTs and FFs are linear in these.

    Every kind gets ``one`` (a constant); the rest are the kind's own (its ``features`` rule in
    :data:`mixq.hw.kinds.PE_KINDS`: each feature counts bits of one structure in :mod:`mixq.rtl.pe`).
    """
    return PE_KINDS[cfg.kind].features(cfg)


def dsp_count(cfg: PeConfig, dsp_type: str = "DSP48E1") -> int:
    """DSP blocks of a PE: the yosys rule on Xilinx; two 18x19 products per block on Intel."""
    return PE_KINDS[cfg.kind].dsps(cfg, dsp_type)


def bram_count(cfg: PeConfig) -> int:
    """18-Kb block RAM halves of a ``ram`` PE placed in block RAM."""
    return PE_KINDS[cfg.kind].brams(cfg)


@dataclass(frozen=True)
class Coefficients:
    """Fitted LUT/FF coefficients: ``kinds[kind][resource][feature]``, plus provenance."""

    kinds: dict[str, dict[str, dict[str, float]]]
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "meta": self.meta, "kinds": self.kinds}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Coefficients:
        if d.get("version") != 1:
            raise HardwareError(f"coefficients: version {d.get('version')!r} is not supported (expected 1)")
        return Coefficients(kinds=d["kinds"], meta=d.get("meta", {}), version=1)


@lru_cache(maxsize=1)
def _default_coefficients() -> Coefficients:
    try:
        text = ilr.files("mixq.hw").joinpath("data/coefficients.json").read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise HardwareError("mixq/hw/data/coefficients.json is missing; run `mixq calibrate-hw`") from e
    return Coefficients.from_dict(json.loads(text))


@dataclass(frozen=True)
class CostModel:
    """PE costs from a set of coefficients (``CostModel.default()``: the shipped fit)."""

    coefficients: Coefficients
    _cache: dict[tuple[PeConfig, str], Resources] = field(default_factory=dict, compare=False, repr=False)
    _dots: dict[tuple[Any, ...], tuple[Resources, int]] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def default() -> CostModel:
        return _default_model()

    def linear(self, cfg: PeConfig, resource: str) -> float:
        """The fitted LUT or FF count of ``cfg``."""
        try:
            coef = self.coefficients.kinds[cfg.kind][resource]
        except KeyError:
            raise HardwareError(f"no fitted {resource} coefficients for PE kind {cfg.kind!r}; "
                                "run `mixq calibrate-hw`") from None
        return sum(coef.get(name, 0.0) * v for name, v in features(cfg).items())

    def carry(self, cfg: PeConfig) -> float:
        """The fitted CARRY4 count of ``cfg`` (7-series carry chains; not part of :class:`Resources`)."""
        return self.linear(cfg, "carry")

    def pe(self, cfg: PeConfig, dsp_type: str = "DSP48E1") -> Resources:
        """Resources of one PE on a part with ``dsp_type`` DSPs (cached)."""
        key = (cfg, dsp_type)
        hit = self._cache.get(key)
        if hit is None:
            hit = Resources(lut=self.linear(cfg, "lut"), ff=self.linear(cfg, "ff"),
                            dsp=float(dsp_count(cfg, dsp_type)), bram=float(bram_count(cfg)))
            self._cache[key] = hit
        return hit

    def dot(self, kind: str, wbits: int, abits: int, simd: int, acc_len: int, signed_act: bool,
            dsp_type: str) -> tuple[Resources, int]:
        """(resources, accumulator bits) of a dot unit, cached by its parameters (the optimizer's hot path)."""
        key = (kind, wbits, abits, simd, acc_len, signed_act, dsp_type)
        hit = self._dots.get(key)
        if hit is None:
            cfg = PeConfig(kind, wbits, abits, simd, acc_len=acc_len, signed_act=signed_act)
            hit = (self.pe(cfg, dsp_type), cfg.acc_bits)
            self._dots[key] = hit
        return hit

    def lutram_coefs(self) -> tuple[float, float]:
        """(LUTs per RAM32M/RAM64M primitive-LUT, LUTs per read-mux input) of LUTRAM."""
        c = self.coefficients.kinds.get("ram", {}).get("lut", {})
        return c.get("prims", 1.0) * 4.0, c.get("mux", 1.0)


@lru_cache(maxsize=1)
def _default_model() -> CostModel:
    return CostModel(_default_coefficients())


__all__ = ["CostModel", "Coefficients", "Resources", "features", "dsp_count", "bram_count",
           "PeConfig", "shift_range"]
