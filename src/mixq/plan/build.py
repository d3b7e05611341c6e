"""Builders for common plans."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from mixq.formats import NumberFormat
from mixq.plan.plan import LayerPlan, QuantPlan


def with_sign(fmt: NumberFormat | None, signed: bool) -> NumberFormat | None:
    """The same activation format, signed or unsigned (formats without a sign flag are returned as is)."""
    if fmt is None or not hasattr(fmt, "signed") or fmt.signed == signed:
        return fmt
    return dataclasses.replace(fmt, signed=signed)  # type: ignore[type-var]


def uniform_plan(
    model: str,
    layers: Sequence[str],
    weight: NumberFormat | None,
    act: NumberFormat | None,
    *,
    signed_inputs: Collection[str] = (),
    overrides: Mapping[str, LayerPlan] | None = None,
    weight_granularity: str = "channel",
    act_observer: str = "minmax",
    weight_alt: NumberFormat | None = None,
    alt_ratio: float = 0.0,
) -> QuantPlan:
    """One weight and activation format for every layer.

    Activations are unsigned (post-ReLU) except for the layers named in
    ``signed_inputs`` (e.g. the first layer, fed normalised images).
    ``overrides`` replaces whole layer plans (e.g. an 8-bit first/last layer policy).
    """
    out: dict[str, LayerPlan] = {}
    for name in layers:
        if overrides and name in overrides:
            out[name] = overrides[name]
            continue
        out[name] = LayerPlan(
            weight=weight,
            weight_alt=weight_alt,
            alt_ratio=alt_ratio if weight_alt is not None else 0.0,
            weight_granularity=weight_granularity,
            act=with_sign(act, name in signed_inputs),
            act_observer=act_observer,
        )
    return QuantPlan(model=model, layers=out)
