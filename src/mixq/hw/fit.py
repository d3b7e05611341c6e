"""Fit the LUT/FF coefficients of the PE cost model to synthesis records (pure; no yosys).

A record is one synthesized PE: ``{"name", "pe": PeConfig.to_dict(), "lut", "ff",
"dsp", "bram18", ...}`` (written by :mod:`mixq.rtl.sweep`). For every PE kind
and resource the coefficients minimise the *largest relative error* over the
kind's records (a linear program), then, at that worst case, the sum of
relative errors; coefficients are non-negative so a PE never gets cheaper when
it grows. DSP and block-RAM counts are rules, not fitted: :func:`evaluate`
checks them for exact agreement.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixq.errors import DataError, HardwareError
from mixq.hw.cost import FITTED, Coefficients, CostModel, features
from mixq.hw.pe import PeConfig

LUT_TARGET = 0.15  # the acceptance bound on every swept PE's LUT error


def load_records(path: str | Path) -> dict[str, Any]:
    """Read a records document (``{"version", "tool", "records": [...]}``)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: cannot read synthesis records ({e})") from e
    if not isinstance(doc, dict) or "records" not in doc:
        raise DataError(f"{p}: not a synthesis-records file (no 'records')")
    return doc


def _minimax(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative ``c`` minimising max_i |x_i c - y_i| / y_i, then sum_i of the same."""
    from scipy.optimize import linprog

    n, p = x.shape
    scale = np.maximum(y, 1.0)
    xs, ys = x / scale[:, None], y / scale
    # stage 1: variables [c (p), t]; minimise t s.t. -t <= xs c - ys <= t
    a1 = np.vstack([np.hstack([xs, -np.ones((n, 1))]), np.hstack([-xs, -np.ones((n, 1))])])
    b1 = np.concatenate([ys, -ys])
    r1 = linprog(np.r_[np.zeros(p), 1.0], A_ub=a1, b_ub=b1, bounds=[(0, None)] * p + [(0, None)],
                 method="highs")
    if not r1.success:
        raise HardwareError(f"calibration fit failed: {r1.message}")
    t = float(r1.x[-1]) * 1.0005 + 1e-9
    # stage 2: variables [c (p), e (n)]; minimise sum e s.t. |xs c - ys| <= e <= t
    a2 = np.vstack([np.hstack([xs, -np.eye(n)]), np.hstack([-xs, -np.eye(n)])])
    r2 = linprog(np.r_[np.zeros(p), np.ones(n)], A_ub=a2, b_ub=np.concatenate([ys, -ys]),
                 bounds=[(0, None)] * p + [(0, t)] * n, method="highs")
    return np.asarray(r2.x[:p] if r2.success else r1.x[:p])


def fit(records: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Coefficients:
    """Coefficients for every PE kind present in ``records``."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_kind[r["pe"]["kind"]].append(r)
    kinds: dict[str, dict[str, dict[str, float]]] = {}
    for kind, recs in sorted(by_kind.items()):
        feats = [features(PeConfig.from_dict(r["pe"])) for r in recs]
        names = sorted({k for f in feats for k in f})
        x = np.array([[f.get(k, 0.0) for k in names] for f in feats], dtype=float)
        kinds[kind] = {}
        for res in FITTED:
            y = np.array([float(r[res]) for r in recs])
            c = _minimax(x, y) if np.any(y > 0) and np.any(x) else np.zeros(len(names))
            kinds[kind][res] = {k: round(float(v), 5) for k, v in zip(names, c, strict=True)}
    m = {"records": len(records), "objective": "minimax relative error per kind, c >= 0"}
    return Coefficients(kinds=kinds, meta={**m, **(meta or {})})


@dataclass(frozen=True)
class FitRow:
    """Measured vs predicted resources of one swept PE."""

    name: str
    kind: str
    measured: dict[str, float]
    predicted: dict[str, float]

    def err(self, res: str) -> float:
        m, p = self.measured[res], self.predicted[res]
        if m == 0:
            return 0.0 if abs(p) < 0.5 else float("inf")
        return abs(p - m) / m

    @property
    def lut_err(self) -> float:
        return self.err("lut")

    @property
    def dsp_ok(self) -> bool:
        return self.measured["dsp"] == self.predicted["dsp"] and self.measured["bram"] == self.predicted["bram"]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "measured": self.measured, "predicted": self.predicted,
                "lut_err": round(self.lut_err, 4), "ff_err": round(self.err("ff"), 4),
                "carry_err": round(self.err("carry"), 4), "dsp_ok": self.dsp_ok}


def evaluate(model: CostModel, records: list[dict[str, Any]]) -> list[FitRow]:
    """The model's prediction for every record, beside the synthesis counts."""
    rows = []
    for r in records:
        cfg = PeConfig.from_dict(r["pe"])
        p = model.pe(cfg, "DSP48E1")
        carry = model.carry(cfg) if "carry" in model.coefficients.kinds.get(cfg.kind, {}) else 0.0
        rows.append(FitRow(
            name=r["name"], kind=cfg.kind,
            measured={"lut": float(r["lut"]), "ff": float(r["ff"]), "dsp": float(r["dsp"]),
                      "bram": float(r.get("bram18", 0)), "carry": float(r.get("carry", 0))},
            predicted={"lut": round(p.lut, 1), "ff": round(p.ff, 1), "dsp": p.dsp, "bram": p.bram,
                       "carry": round(carry, 1)},
        ))
    return rows


def _carry_worst(rows: list[FitRow]) -> str:
    """The worst CARRY4 error of ``rows``: relative where yosys used any (and the largest miss in chains)."""
    used = [r for r in rows if r.measured.get("carry", 0) > 0]
    miss = max((abs(r.measured.get("carry", 0) - r.predicted.get("carry", 0)) for r in rows), default=0.0)
    rel = f"{100 * max(r.err('carry') for r in used):.1f}%" if used else "—"
    return f"{rel} ({miss:.0f})"


def max_error(rows: list[FitRow]) -> float:
    return max((r.lut_err for r in rows), default=0.0)


def markdown_table(rows: list[FitRow], tool: str = "") -> str:
    """The calibration table: every swept PE with measured and predicted counts and errors."""
    lines = [
        "# Hardware cost model calibration",
        "",
        "PEs generated by `mixq.rtl.pe`, synthesized with `yosys synth_xilinx` (7-series)"
        f"{' — ' + tool if tool else ''}; "
        "LUT/FF coefficients fitted per PE kind (minimax relative error, `mixq calibrate-hw`); "
        "DSP and BRAM counts are rules and must match exactly.",
        "",
        f"Worst LUT error: **{100 * max_error(rows):.1f}%** (target {100 * LUT_TARGET:.0f}%); "
        f"DSP/BRAM exact on {sum(r.dsp_ok for r in rows)}/{len(rows)} PEs.",
        "",
    ]
    by_kind: dict[str, list[FitRow]] = defaultdict(list)
    for r in rows:
        by_kind[r.kind].append(r)
    lines += ["Per kind, the median and worst relative error of each fitted resource (DSP and BRAM: exact or not).", "",
              "| kind | PEs | LUT err median / worst | FF err median / worst | worst CARRY4 err (abs) "
              "| DSP + BRAM exact |", "|---|---:|---:|---:|---:|---:|"]

    def med_worst(rs: list[FitRow], res: str) -> str:
        e = sorted(r.err(res) for r in rs)
        return f"{100 * float(np.median(e)):.1f}% / {100 * e[-1]:.1f}%"

    for k, rs in by_kind.items():
        lines.append(f"| {k} | {len(rs)} | {med_worst(rs, 'lut')} | {med_worst(rs, 'ff')} | {_carry_worst(rs)} | "
                     f"{sum(r.dsp_ok for r in rs)}/{len(rs)} |")
    lines += ["", "| PE | LUT yosys | LUT model | LUT err | FF yosys | FF model | CARRY4 yosys | CARRY4 model "
              "| DSP yosys | DSP model | BRAM18 yosys | BRAM18 model |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, p = r.measured, r.predicted
        lines.append(f"| {r.name} | {m['lut']:.0f} | {p['lut']:.0f} | {100 * r.lut_err:.1f}% | {m['ff']:.0f} | "
                     f"{p['ff']:.0f} | {m.get('carry', 0):.0f} | {p.get('carry', 0):.0f} | {m['dsp']:.0f} | "
                     f"{p['dsp']:.0f} | {m['bram']:.0f} | {p['bram']:.0f} |")
    return "\n".join(lines) + "\n"
