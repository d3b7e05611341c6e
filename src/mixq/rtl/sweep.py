"""Calibration of the hardware cost model from synthesis of mixq's own PEs.

generate the sweep (:func:`default_sweep`) -> synthesize every PE with yosys
(:func:`run_sweep`) -> fit the coefficients (the pure :func:`mixq.hw.fit.fit`)
-> write ``coefficients.json`` and ``synth_records.json`` into ``mixq/hw/data``
(and a copy of the records as the tests' golden file) -> report per-PE errors.

``mixq calibrate-hw`` runs this; ``--refit`` re-fits from stored records without yosys.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixq.hw import fit as fitmod
from mixq.hw.cost import CostModel
from mixq.hw.kinds import PE_KINDS
from mixq.hw.pe import PeConfig, dsp_packing
from mixq.io import atomic_write_json, atomic_write_text
from mixq.rtl.synth import synthesize_pe

DATA_DIR = Path(__file__).resolve().parents[1] / "hw" / "data"


def _dot(kind: str, pairs: list[tuple[int, int]], simds: list[int]) -> list[PeConfig]:
    out = []
    for n, (w, a) in enumerate(pairs):
        for j, s in enumerate(simds):
            acc_len = (64, 1024, 4096)[(n + j) % 3]  # vary the accumulator width across the sweep
            # packed DSP units are only ever built where packing is legal
            if PE_KINDS[kind].rows == 2 and dsp_packing("DSP48E1", w, a, acc_len) != 2:
                continue
            out.append(PeConfig(kind, w, a, s, acc_len=acc_len))
    return out


def default_sweep(small: bool = False) -> list[PeConfig]:
    """The PEs the coefficients are fitted to (``small``: two tiny PEs, for a smoke test)."""
    simds = [1, 4, 16]
    if small:  # one SP2 and one packed-DSP unit from the full sweep
        return _dot("sp2", [(3, 4)], [1]) + _dot("fixed_dsp2", [(2, 2)], [1])
    sweep = (
        _dot("fixed_lut", [(2, 2), (2, 4), (3, 3), (4, 4), (4, 8), (5, 5), (6, 6), (8, 4), (8, 8)], simds)
        + _dot("fixed_dsp", [(4, 4), (6, 6), (8, 8), (4, 8)], simds)
        + _dot("fixed_dsp2", [(2, 2), (3, 3), (4, 4), (2, 8), (4, 6)], simds)
        + _dot("sp2", [(w, a) for w in (3, 4, 5, 6) for a in (4, 8)], simds)
        + _dot("pot", [(w, a) for w in (2, 3, 4, 5) for a in (4, 8)], simds)
        + _dot("ternary", [(2, 2), (2, 4), (2, 8)], simds)
        # between the main points: the lane counts the folding optimizer also picks
        + _dot("fixed_dsp", [(4, 4), (8, 8)], [2, 8])
        + _dot("fixed_dsp2", [(2, 2), (3, 3), (4, 4)], [2, 8])
        + _dot("fixed_lut", [(3, 3), (4, 4)], [2, 8])
        + _dot("sp2", [(4, 4), (5, 8)], [2, 8])
        + _dot("pot", [(3, 4)], [2, 8])
        # products under 9 bits (signed 4x4, 2x4): yosys builds the fixed_dsp MACs in LUTs
        + [PeConfig("fixed_dsp", 4, 4, s, acc_len=1024, signed_act=True) for s in (1, 4, 16)]
        + _dot("fixed_dsp", [(2, 4)], simds)
        # SP2 exponent splits other than the default: (3, 1) of 5 bits
        + [PeConfig("sp2", w, a, s, acc_len=1024, sp2_m1=3) for w in (5,) for a in (4, 8) for s in (1, 4, 16)]
        + [PeConfig("xnor", 1, 1, s, acc_len=1024) for s in (8, 16, 32, 64, 128)]
        # popcount groups of 6 lanes: a lone group, partial last groups, other accumulator widths
        + [PeConfig("xnor", 1, 1, s, acc_len=n) for s, n in ((4, 64), (12, 4096), (36, 64))]
        + [PeConfig("tree", abits=b, simd=n) for n in (2, 4, 8, 16, 32) for b in (6, 12)]
        + [PeConfig("acc", abits=b, accw=w) for b, w in ((8, 16), (12, 24), (16, 32), (20, 40))]
        + [PeConfig("requant", accw=w, out_bits=o)
           for w, o in ((16, 4), (20, 8), (24, 4), (28, 8), (32, 8), (40, 8))]
        + [PeConfig("thresh", accw=w, out_bits=o) for w, o in ((12, 2), (16, 2), (16, 4), (20, 4), (24, 3))]
        + [PeConfig("ram", wbits=w, simd=d, abits=1)
           for w, d in ((16, 1024), (36, 512), (72, 512), (8, 4096), (4, 16384), (32, 64))]
        + [PeConfig("ram", wbits=w, simd=d, abits=0) for w, d in ((16, 64), (8, 256), (32, 32), (4, 128), (12, 64))]
    )
    return sweep


def yosys_version() -> str:
    try:
        out = subprocess.run(["yosys", "-V"], capture_output=True, text=True, check=False, timeout=30)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_sweep(cfgs: list[PeConfig], jobs: int = 1,
              progress: Callable[[int, int, PeConfig], None] | None = None) -> list[dict[str, Any]]:
    """Synthesize every PE (``jobs`` yosys processes at a time); one record per PE, in order."""
    def one(cfg: PeConfig) -> dict[str, Any]:
        r = synthesize_pe(cfg)
        return {"name": cfg.name, "pe": cfg.to_dict(), **r.to_dict()}

    out: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        for i, rec in enumerate(ex.map(one, cfgs)):
            out.append(rec)
            if progress:
                progress(i + 1, len(cfgs), cfgs[i])
    return out


def records_document(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": 1, "tool": yosys_version(), "family": "xc7", "records": records}


@dataclass(frozen=True)
class CalibrationOutcome:
    coefficients_path: Path
    records_path: Path
    rows: list[fitmod.FitRow]
    max_lut_error: float
    dsp_exact: bool


def merge_sweep(cfgs: list[PeConfig], stored: list[dict[str, Any]], resynth: Callable[[PeConfig], bool],
                jobs: int = 1, progress: Callable[[int, int, PeConfig], None] | None = None) -> list[dict[str, Any]]:
    """Records of ``cfgs``: synthesized where ``resynth(cfg)`` or no stored record has its name, else stored."""
    by_name = {r["name"]: r for r in stored}
    todo = [c for c in cfgs if resynth(c) or c.name not in by_name]
    fresh = {r["name"]: r for r in run_sweep(todo, jobs=jobs, progress=progress)}
    return [fresh.get(c.name) or by_name[c.name] for c in cfgs]


def calibrate(*, out_dir: Path = DATA_DIR, golden_dir: Path | None = None, jobs: int = 1,
              small: bool = False, refit: bool = False, table_path: Path | None = None,
              resynth: Callable[[PeConfig], bool] | None = None,
              progress: Callable[[int, int, PeConfig], None] | None = None) -> CalibrationOutcome:
    """Run (or, with ``refit``, reuse) the synthesis sweep, fit, and write the data files.

    ``resynth``: synthesize only the sweep's PEs it selects (and those without a stored record),
    reusing the shipped records for the rest (after a generator change to some kinds).
    """
    rec_path = out_dir / "synth_records.json"
    if refit:  # re-fit the shipped records (or those already in out_dir)
        doc = fitmod.load_records(rec_path if rec_path.exists() else DATA_DIR / "synth_records.json")
    else:
        if resynth is not None and not small:
            stored = fitmod.load_records(DATA_DIR / "synth_records.json")["records"]
            records = merge_sweep(default_sweep(), stored, resynth, jobs=jobs, progress=progress)
        else:
            records = run_sweep(default_sweep(small), jobs=jobs, progress=progress)
        doc = records_document(records)
        if small:  # a smoke sweep checks the model, it never replaces the stored data
            rows = fitmod.evaluate(CostModel.default(), doc["records"])
            return CalibrationOutcome(out_dir / "coefficients.json", rec_path, rows,
                                      fitmod.max_error(rows), all(r.dsp_ok for r in rows))
    coeffs = fitmod.fit(doc["records"])
    model = CostModel(coeffs)
    rows = fitmod.evaluate(model, doc["records"])
    coef_path = atomic_write_json(out_dir / "coefficients.json", coeffs.to_dict())
    atomic_write_json(rec_path, doc)
    if golden_dir is not None:
        atomic_write_json(golden_dir / "synth_records.json", doc)
    if table_path is not None:
        atomic_write_text(table_path, fitmod.markdown_table(rows, doc.get("tool", "")))
    return CalibrationOutcome(coef_path, rec_path, rows, fitmod.max_error(rows), all(r.dsp_ok for r in rows))
