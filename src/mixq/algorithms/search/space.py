"""The search space: per-layer options (weight bits, activation bits, scheme / SP2 ratio ρ).

An `Option` is what one layer can be: ``wbits``-bit weights, fixed point
(``rho = 0``), SP2 (``rho = 1``) or the row-wise mix of MSQ (``0 < rho < 1``: a
fraction ρ of the rows in SP2 on LUT lanes, the rest fixed point on DSPs),
with ``abits``-bit input activations. `layer_plan` turns an option into a
`LayerPlan` (the SP2 rows of a mixed layer are the ones MSQ would give SP2:
lowest SP2-vs-fixed error ratio).

>>> Option(4, 8).label, Option(4, 4, 0.5).label, Option(6, 8, 1.0).label
('w4a8', 'w4a4-sp2r50', 'w6a8-sp2')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixq.errors import MixqError
from mixq.formats import FixedPoint, NumberFormat, SumOfPowers
from mixq.graph.spec import LayerSpec
from mixq.plan import HwMapping, LayerPlan

SP2_MIN_BITS = 3


@dataclass(frozen=True, order=True)
class Option:
    """One layer's quantization choice."""

    wbits: int
    abits: int
    rho: float = 0.0  # fraction of rows in SP2

    def __post_init__(self) -> None:
        if not 2 <= self.wbits <= 8 or not 2 <= self.abits <= 8:
            raise MixqError(f"search option: bits must be in 2..8, got w{self.wbits} a{self.abits}")
        if not 0.0 <= self.rho <= 1.0:
            raise MixqError(f"search option: rho must be in [0, 1], got {self.rho}")
        if self.rho > 0 and self.wbits < SP2_MIN_BITS:
            raise MixqError(f"search option: SP2 needs >= {SP2_MIN_BITS} weight bits, got {self.wbits}")

    @property
    def label(self) -> str:
        if self.rho >= 1.0:
            return f"w{self.wbits}a{self.abits}-sp2"
        if self.rho > 0:
            return f"w{self.wbits}a{self.abits}-sp2r{round(100 * self.rho)}"
        return f"w{self.wbits}a{self.abits}"

    @property
    def weight_key(self) -> tuple[int, float]:
        return (self.wbits, self.rho)


@dataclass(frozen=True)
class SearchSpace:
    """Candidate weight bits, activation bits and SP2 ratios (every combination that is legal)."""

    wbits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    abits: tuple[int, ...] = (4, 6, 8)
    rhos: tuple[float, ...] = (0.0, 0.5, 1.0)
    # widths of the residual streams (the plan's residual_bits; None: exact) tried where the model has adds: one
    # for the whole network, each a sweep of its own
    residual_bits: tuple[int | None, ...] = (None, 12, 8)

    def __post_init__(self) -> None:
        if not self.wbits or not self.abits or not self.rhos or not self.residual_bits:
            raise MixqError("search space: wbits, abits, rhos and residual_bits must each have at least one value")
        for r in self.rhos:
            if not 0.0 <= r <= 1.0:
                raise MixqError(f"search space: rho {r} is not in [0, 1]")
        for b in self.residual_bits:
            if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16):
                raise MixqError(f"search space: residual_bits {b!r} is not an integer in [2, 16] or None (exact)")

    def residual_widths(self, specs: Sequence[LayerSpec]) -> tuple[int | None, ...]:
        """The stream widths a network of ``specs`` is searched at: ``residual_bits`` where it has residual
        adds, else exact only (there are no streams to store)."""
        return self.residual_bits if any(s.kind == "add" for s in specs) else (None,)

    def options(self) -> list[Option]:
        return [Option(w, a, r) for w in sorted(set(self.wbits)) for a in sorted(set(self.abits))
                for r in sorted(set(self.rhos)) if r == 0 or w >= SP2_MIN_BITS]

    def weight_keys(self) -> list[tuple[int, float]]:
        return sorted({o.weight_key for o in self.options()})


def weight_formats(wbits: int) -> tuple[NumberFormat, NumberFormat]:
    """(fixed point, SP2) weight formats of ``wbits`` bits."""
    return FixedPoint(wbits, signed=True, narrow=True), SumOfPowers(max(wbits, SP2_MIN_BITS), 2)


def act_format(abits: int, signed: bool) -> FixedPoint:
    return FixedPoint(abits, signed=signed)


def sp2_rows(advantage: torch.Tensor, rho: float) -> tuple[int, ...]:
    """The ``round(rho * rows)`` rows with the lowest SP2-vs-fixed advantage (MSQ's rule), sorted."""
    n = advantage.numel()
    k = round(rho * n)
    order = sorted(range(n), key=lambda i: (float(advantage[i]), i))
    return tuple(sorted(order[:k]))


def layer_plan(opt: Option, signed_input: bool, advantage: torch.Tensor | None = None,
               mapping: HwMapping | None = None) -> LayerPlan:
    """The `LayerPlan` of ``opt`` (``advantage``: per-row log error ratio SP2/fixed, for mixed layers)."""
    fixed, sp2 = weight_formats(opt.wbits)
    act = act_format(opt.abits, signed_input)
    m = mapping or HwMapping()
    if opt.rho >= 1.0:
        return LayerPlan(weight=sp2, act=act, mapping=m)
    if opt.rho <= 0.0:
        return LayerPlan(weight=fixed, act=act, mapping=m)
    rows = sp2_rows(advantage, opt.rho) if advantage is not None else None
    return LayerPlan(weight=fixed, weight_alt=sp2, alt_ratio=opt.rho, alt_rows=rows, act=act, mapping=m)


def uniform_options(names: Sequence[str], opt: Option) -> dict[str, Option]:
    return {n: opt for n in names}
