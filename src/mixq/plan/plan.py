"""`QuantPlan` / `LayerPlan`: the one object every stage reads or writes.

A plan is an ordered map from a layer's qualified name to its `LayerPlan`:
the weight format per row (a primary format, optionally a second format for a
subset of rows — the row-wise mixed scheme of MSQ), the activation format of
the layer's input, how scales are chosen, and the hardware mapping. Plans are
frozen and validated on construction; they round-trip through versioned JSON
(see :mod:`mixq.plan.jsonio`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from mixq.errors import PlanError
from mixq.formats import NumberFormat

SCHEMA_VERSION = 1

GRANULARITIES = ("tensor", "channel", "group")
OBSERVERS = ("minmax", "percentile", "mse", "kl")
CORES = ("auto", "dsp", "lut")


@dataclass(frozen=True)
class HwMapping:
    """How a layer maps onto hardware: which core computes its fixed-point rows
    (``dsp`` multipliers or ``lut`` multipliers; ``auto`` lets the hardware model
    decide) and its folding (``pe`` output rows × ``simd`` inputs per cycle)."""

    core: str = "auto"
    pe: int = 1
    simd: int = 1

    def validate(self, where: str) -> None:
        if self.core not in CORES:
            raise PlanError(f"{where}.mapping.core: {self.core!r} is not one of {', '.join(CORES)}")
        for f in ("pe", "simd"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PlanError(f"{where}.mapping.{f}: must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class LayerPlan:
    """Quantization and mapping of one compute layer (conv or linear).

    * ``weight``: the primary weight format; ``None`` keeps the weights in float.
    * ``weight_alt``: a second format for a subset of rows (output channels),
      e.g. SP2 rows on a LUT core beside fixed-point rows on a DSP core (MSQ).
    * ``alt_ratio``: the requested fraction ρ of rows in ``weight_alt``.
    * ``alt_rows``: the concrete rows in ``weight_alt`` once assigned (by MSQ);
      ``None`` means "not assigned yet" (the quantizer then ranks rows itself).
    * ``act``: the format of the layer's *input* activations; ``None`` = float.
    """

    weight: NumberFormat | None = None
    weight_alt: NumberFormat | None = None
    alt_ratio: float = 0.0
    alt_rows: tuple[int, ...] | None = None
    weight_granularity: str = "channel"
    weight_group: int | None = None
    weight_observer: str = "minmax"
    act: NumberFormat | None = None
    act_observer: str = "minmax"
    mapping: HwMapping = field(default_factory=HwMapping)

    def validate(self, where: str, rows: int | None = None) -> None:
        """Raise `PlanError` naming ``where`` (the layer) and the field on any inconsistency."""
        if self.weight_granularity not in GRANULARITIES:
            raise PlanError(
                f"{where}.weight_granularity: {self.weight_granularity!r} is not one of {', '.join(GRANULARITIES)}"
            )
        if self.weight_granularity == "group" and (self.weight_group is None or self.weight_group < 1):
            raise PlanError(f"{where}.weight_group: group granularity needs a positive group size")
        for f in ("weight_observer", "act_observer"):
            if getattr(self, f) not in OBSERVERS:
                raise PlanError(f"{where}.{f}: {getattr(self, f)!r} is not one of {', '.join(OBSERVERS)}")
        if not (0.0 <= float(self.alt_ratio) <= 1.0):
            raise PlanError(f"{where}.alt_ratio: must be in [0, 1], got {self.alt_ratio}")
        if self.weight_alt is not None and self.weight is None:
            raise PlanError(f"{where}.weight_alt: a second row format needs a primary weight format")
        if self.weight_alt is None and (self.alt_ratio > 0 or self.alt_rows):
            raise PlanError(f"{where}.alt_ratio: rows assigned to weight_alt but weight_alt is not set")
        if self.alt_rows is not None:
            if len(set(self.alt_rows)) != len(self.alt_rows):
                raise PlanError(f"{where}.alt_rows: duplicate row indices")
            bad = [r for r in self.alt_rows if isinstance(r, bool) or not isinstance(r, int) or r < 0]
            if bad:
                raise PlanError(f"{where}.alt_rows: row indices must be integers >= 0, got {bad[:5]}")
            if rows is not None:
                bad = [r for r in self.alt_rows if not 0 <= r < rows]
                if bad:
                    raise PlanError(f"{where}.alt_rows: rows {bad[:5]} out of range for {rows} rows")
        self.mapping.validate(where)

    @property
    def weight_bits(self) -> int | None:
        return None if self.weight is None else self.weight.storage_bits

    @property
    def act_bits(self) -> int | None:
        return None if self.act is None else self.act.storage_bits

    def row_scheme(self, rows: int) -> list[int]:
        """Index into ``(weight, weight_alt)`` for every row: 1 for rows in ``alt_rows``.

        Without assigned ``alt_rows`` every row uses the primary format (index 0)
        unless ρ = 1, in which case every row uses ``weight_alt``.
        """
        scheme = [0] * rows
        if self.weight_alt is None:
            return scheme
        if self.alt_rows is not None:
            for r in self.alt_rows:
                scheme[r] = 1
        elif self.alt_ratio >= 1.0:
            scheme = [1] * rows
        return scheme

    def alt_fraction(self, rows: int) -> float:
        """Fraction of rows actually in ``weight_alt`` (assigned rows, else the requested ρ)."""
        if self.weight_alt is None:
            return 0.0
        if self.alt_rows is not None:
            return len(self.alt_rows) / max(rows, 1)
        return float(self.alt_ratio)

    def with_(self, **changes: Any) -> LayerPlan:
        return replace(self, **changes)


@dataclass(frozen=True)
class QuantPlan:
    """An ordered, read-only map from layer name to `LayerPlan`, plus metadata.

    Layers absent from the plan stay in float. ``model`` names the model the plan
    was made for (a zoo name or a file); ``meta`` holds free-form provenance
    (who made it, search settings) that stages carry along but never interpret.
    ``residual_bits``: the residual streams (each residual add's output, after the ReLU that alone reads it)
    quantized to that many bits (:mod:`mixq.graph.residual`), as the hardware stores them; ``None`` keeps them
    exact integers on the accumulator grid (the adds' skip buffers then as wide as the sums).
    """

    model: str
    layers: Mapping[str, LayerPlan]
    version: int = SCHEMA_VERSION
    meta: Mapping[str, Any] = field(default_factory=dict)
    residual_bits: int | None = None

    def __post_init__(self) -> None:
        if self.version != SCHEMA_VERSION:
            raise PlanError(f"version: plan schema {self.version} is not supported (this mixq reads {SCHEMA_VERSION})")
        rb = self.residual_bits
        if rb is not None and (isinstance(rb, bool) or not isinstance(rb, int) or not 2 <= rb <= 16):
            raise PlanError(f"residual_bits: must be an integer in [2, 16] or null, got {rb!r}")
        for name, lp in self.layers.items():
            if not isinstance(lp, LayerPlan):
                raise PlanError(f"layers.{name}: expected a LayerPlan, got {type(lp).__name__}")
            lp.validate(f"layers.{name}")
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def __getitem__(self, name: str) -> LayerPlan:
        try:
            return self.layers[name]
        except KeyError:
            raise PlanError(f"layers.{name}: no such layer in the plan") from None

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def items(self) -> Iterator[tuple[str, LayerPlan]]:
        return iter(self.layers.items())

    def get(self, name: str) -> LayerPlan | None:
        return self.layers.get(name)

    def with_layer(self, name: str, layer: LayerPlan) -> QuantPlan:
        """A new plan with ``name`` replaced (or appended)."""
        layers = dict(self.layers)
        layers[name] = layer
        return replace(self, layers=layers, meta=dict(self.meta))

    def with_meta(self, **meta: Any) -> QuantPlan:
        return replace(self, layers=dict(self.layers), meta={**self.meta, **meta})

    def check_layers(self, names: Mapping[str, int] | list[str]) -> None:
        """Check the plan against a model's compute layers.

        ``names`` maps each layer name to its number of weight rows (or is a list
        of names). Raises `PlanError` naming the first unknown layer or bad row index.
        """
        rows = dict(names) if isinstance(names, Mapping) else {n: None for n in names}
        for name, lp in self.layers.items():
            if name not in rows:
                known = ", ".join(list(rows)[:8])
                raise PlanError(f"layers.{name}: unknown layer (the model's layers are: {known}, ...)")
            lp.validate(f"layers.{name}", rows[name])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantPlan):
            return NotImplemented
        return (self.model == other.model and self.version == other.version
                and list(self.layers.items()) == list(other.layers.items())
                and dict(self.meta) == dict(other.meta) and self.residual_bits == other.residual_bits)

    __hash__ = None  # type: ignore[assignment]


def validate_plan(plan: QuantPlan, *, model: str | None = None,
                  layers: Mapping[str, int] | list[str] | None = None) -> QuantPlan:
    """The check every command runs on a plan before using it; returns ``plan``.

    Refuses a plan made for another model (its recorded ``model`` differs from
    ``model``; a plan that records no model passes), a plan naming layers the
    model does not have or assigning ``alt_rows`` outside ``[0, rows)`` (``layers``
    maps each compute layer to its weight rows, or lists the names), and a plan
    that quantizes nothing (no layers, or every layer without a weight and an
    activation format). Raises :class:`PlanError` naming the field.
    """
    if not isinstance(plan, QuantPlan):
        raise PlanError(f"plan: expected a QuantPlan, got {type(plan).__name__}")
    if model is not None and plan.model and plan.model != model:
        raise PlanError(f"model: the plan was made for model {plan.model!r}, not {model!r}")
    if not plan.layers:
        raise PlanError("layers: the plan has no layers, so it quantizes nothing")
    if all(lp.weight is None and lp.act is None for lp in plan.layers.values()):
        raise PlanError(f"layers: all {len(plan)} layers are float (no weight and no act format), "
                        "so the plan quantizes nothing")
    if layers is not None:
        plan.check_layers(layers)
    else:
        for name, lp in plan.items():
            lp.validate(f"layers.{name}")
    return plan
