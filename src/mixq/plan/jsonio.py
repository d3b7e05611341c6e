"""Versioned JSON form of a `QuantPlan`, with errors that name the field.

Layout (schema version 1)::

    {"mixq_plan": 1, "model": "cnv", "meta": {...},
     "layers": {"features.0": {"weight": {"kind": "fixed", "bits": 8, ...},
                               "weight_alt": null, "alt_ratio": 0.0, "alt_rows": null,
                               "weight_granularity": "channel", "weight_group": null,
                               "weight_observer": "minmax",
                               "act": {"kind": "fixed", "bits": 8, "signed": false, ...},
                               "act_observer": "minmax",
                               "mapping": {"core": "auto", "pe": 1, "simd": 1}}, ...}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mixq.errors import FormatError, PlanError
from mixq.formats import NumberFormat, format_from_dict
from mixq.io import atomic_write_json
from mixq.plan.plan import SCHEMA_VERSION, HwMapping, LayerPlan, QuantPlan

_LAYER_FIELDS = {
    "weight", "weight_alt", "alt_ratio", "alt_rows", "weight_granularity", "weight_group",
    "weight_observer", "act", "act_observer", "mapping",
}


def _fmt_to(fmt: NumberFormat | None) -> dict[str, Any] | None:
    return None if fmt is None else fmt.to_dict()


def _fmt_from(d: Any, where: str) -> NumberFormat | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise PlanError(f"{where}: expected a format object like {{'kind': 'fixed', 'bits': 8}}, got {d!r}")
    try:
        return format_from_dict(d)
    except FormatError as e:
        raise PlanError(f"{where}: {e}") from None


def layer_to_dict(lp: LayerPlan) -> dict[str, Any]:
    return {
        "weight": _fmt_to(lp.weight),
        "weight_alt": _fmt_to(lp.weight_alt),
        "alt_ratio": lp.alt_ratio,
        "alt_rows": None if lp.alt_rows is None else list(lp.alt_rows),
        "weight_granularity": lp.weight_granularity,
        "weight_group": lp.weight_group,
        "weight_observer": lp.weight_observer,
        "act": _fmt_to(lp.act),
        "act_observer": lp.act_observer,
        "mapping": {"core": lp.mapping.core, "pe": lp.mapping.pe, "simd": lp.mapping.simd},
    }


def layer_from_dict(d: Any, where: str) -> LayerPlan:
    if not isinstance(d, dict):
        raise PlanError(f"{where}: expected an object, got {type(d).__name__}")
    unknown = set(d) - _LAYER_FIELDS
    if unknown:
        raise PlanError(f"{where}.{sorted(unknown)[0]}: unknown field (known: {', '.join(sorted(_LAYER_FIELDS))})")
    m = d.get("mapping") or {}
    if not isinstance(m, dict):
        raise PlanError(f"{where}.mapping: expected an object")
    bad = set(m) - {"core", "pe", "simd"}
    if bad:
        raise PlanError(f"{where}.mapping.{sorted(bad)[0]}: unknown field")
    rows = d.get("alt_rows")
    if rows is not None and (not isinstance(rows, list) or not all(isinstance(r, int) for r in rows)):
        raise PlanError(f"{where}.alt_rows: expected a list of row indices")
    ratio = d.get("alt_ratio", 0.0)
    if not isinstance(ratio, int | float) or isinstance(ratio, bool):
        raise PlanError(f"{where}.alt_ratio: expected a number, got {ratio!r}")
    lp = LayerPlan(
        weight=_fmt_from(d.get("weight"), f"{where}.weight"),
        weight_alt=_fmt_from(d.get("weight_alt"), f"{where}.weight_alt"),
        alt_ratio=float(ratio),
        alt_rows=None if rows is None else tuple(rows),
        weight_granularity=d.get("weight_granularity", "channel"),
        weight_group=d.get("weight_group"),
        weight_observer=d.get("weight_observer", "minmax"),
        act=_fmt_from(d.get("act"), f"{where}.act"),
        act_observer=d.get("act_observer", "minmax"),
        mapping=HwMapping(core=m.get("core", "auto"), pe=m.get("pe", 1), simd=m.get("simd", 1)),
    )
    lp.validate(where)
    return lp


_PLAN_FIELDS = {"mixq_plan", "model", "meta", "layers", "residual_bits"}


def plan_to_dict(plan: QuantPlan) -> dict[str, Any]:
    return {
        "mixq_plan": plan.version,
        "model": plan.model,
        "meta": dict(plan.meta),
        "layers": {name: layer_to_dict(lp) for name, lp in plan.items()},
        **({"residual_bits": plan.residual_bits} if plan.residual_bits is not None else {}),
    }


def plan_from_dict(d: Any, source: str = "plan") -> QuantPlan:
    if not isinstance(d, dict):
        raise PlanError(f"{source}: a plan must be a JSON object")
    unknown = set(d) - _PLAN_FIELDS
    if unknown:
        known = ", ".join(sorted(_PLAN_FIELDS))
        raise PlanError(f"{source}: field {sorted(unknown)[0]!r}: unknown field (known: {known})")
    version = d.get("mixq_plan")
    if version is None:
        raise PlanError(f"{source}: field 'mixq_plan' (schema version) is missing")
    if version != SCHEMA_VERSION:
        raise PlanError(f"{source}: field 'mixq_plan': schema version {version!r} is not supported "
                        f"(this mixq reads {SCHEMA_VERSION})")
    layers = d.get("layers")
    if not isinstance(layers, dict):
        raise PlanError(f"{source}: field 'layers' must be an object mapping layer names to layer plans")
    model = d.get("model", "")
    if not isinstance(model, str):
        raise PlanError(f"{source}: field 'model' must be a string")
    meta = d.get("meta") or {}
    if not isinstance(meta, dict):
        raise PlanError(f"{source}: field 'meta' must be an object")
    parsed = {name: layer_from_dict(lp, f"layers.{name}") for name, lp in layers.items()}
    return QuantPlan(model=model, layers=parsed, version=SCHEMA_VERSION, meta=meta,
                     residual_bits=d.get("residual_bits"))


def save_plan(plan: QuantPlan, path: str | os.PathLike[str]) -> Path:
    """Write the plan as JSON atomically."""
    return atomic_write_json(path, plan_to_dict(plan))


def load_plan(path: str | os.PathLike[str]) -> QuantPlan:
    """Read a plan; a missing file, bad JSON or an invalid field raises `PlanError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise PlanError(f"{p}: plan file not found")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"{p}: not valid JSON ({e})") from None
    try:
        return plan_from_dict(d, source=str(p))
    except PlanError as e:
        msg = str(e)
        raise PlanError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
