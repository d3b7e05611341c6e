"""The reference sweep: every PE kind synthesized as its plain reference circuit
(:mod:`mixq.rtl.reference`) and as mixq's generated circuit (:mod:`mixq.rtl.pe`), side by side.

:func:`reference_sweep` lists the PEs: every dot kind at its legal weight widths of 2..8 bits x
4/8-bit activations x 1/4/8/16 lanes (accumulating 1024 products), and the components.
:func:`run_reference_sweep` synthesizes both circuits of each with ``yosys synth_xilinx`` (LUT kinds
``-nodsp``, DSP kinds the default flow; ``fixed_lut`` references also in the default flow, as
``dsp_default``, to see where yosys would put the multiply on a DSP; a few SP2 / PoT references in
the other sign style, as ``sign_negate``), at most ``jobs`` yosys at a
time. Every synthesis also times the mapped netlist (yosys ``sta``, ``arrival_ps``: see
:mod:`mixq.rtl.synth`), so a reference is judged at the clock the generated units keep. Records carry
the SHA-1 of the Verilog they were synthesized from, so a re-run only synthesizes circuits that changed
or were not yet timed (``generator_only``: never the references). The document is
``mixq/hw/data/reference_records.json``: the shape of ``synth_records.json``, each record the
reference's counts plus ``generator`` (the generated circuit's counts).

:func:`compare` judges a cost model against the cheaper of the two circuits of every PE: fewer LUTs at
the same DSP count, among the circuits that keep the clock (a longest path no longer than the slowest
generated dot unit's, :func:`clock_budget`), and also by LUTs alone (``lut_err_lut_only``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mixq.hw.bits import mul_dsps
from mixq.hw.cost import CostModel
from mixq.hw.kinds import MULTIPLY_KINDS, PE_KINDS
from mixq.hw.pe import PeConfig, dsp_packing
from mixq.io import atomic_write_json
from mixq.rtl.pe import generate, uses_nodsp
from mixq.rtl.reference import DEFAULT_SIGN, reference, sp2_config
from mixq.rtl.sweep import DATA_DIR, yosys_version
from mixq.rtl.synth import synthesize_verilog

RECORDS_PATH = DATA_DIR / "reference_records.json"
ACC_LEN = 1024
SIMDS = (1, 4, 8, 16)
ACTS = (4, 8)
# weight widths per dot kind, within its legal 2..8 bits (pot codes wider than 5 bits shift by
# 2**(w-1) - 1 >= 31 places and SP2 wider than 6 by >= 15: 40+ / 24+-bit products; not swept). The
# grid is sparse in the widths (2 CPU cores, ~10 s per yosys run).
WIDTHS = {"fixed_lut": (2, 4, 8), "fixed_dsp": (4, 8), "fixed_dsp2": (2, 4), "sp2": (3, 4, 5), "pot": (2, 3, 4),
          "ternary": (2,)}
SIDES = ("reference", "dsp_default", "generator", "sign_negate")


def reference_sweep() -> list[PeConfig]:
    """The PEs of the reference comparison (see the module docstring)."""
    out: list[PeConfig] = []
    for kind, widths in WIDTHS.items():
        for w in widths:
            for a in ACTS:
                if PE_KINDS[kind].rows == 2 and dsp_packing("DSP48E1", w, a, ACC_LEN) != 2:
                    continue
                out += [PeConfig(kind, w, a, s, acc_len=ACC_LEN) for s in SIMDS]
    out += [sp2_config(a, s, (3, 1), ACC_LEN) for a in ACTS for s in SIMDS]  # the (3, 1) split of 5 bits
    out += [PeConfig("xnor", 1, 1, s, acc_len=ACC_LEN) for s in (8, 16, 64)]
    out += [PeConfig("tree", abits=b, simd=n) for n, b in ((4, 6), (16, 12))]
    out += [PeConfig("acc", abits=8, accw=16)]
    out += [PeConfig("requant", accw=w, out_bits=o) for w, o in ((16, 4), (32, 8))]
    out += [PeConfig("thresh", accw=w, out_bits=o) for w, o in ((12, 2), (16, 4))]
    out += [PeConfig("ram", wbits=16, simd=1024, abits=1), PeConfig("ram", wbits=16, simd=64, abits=0)]
    return out


def _side(cfg: PeConfig, side: str) -> tuple[str, bool] | None:
    """(Verilog, -nodsp) of one side of ``cfg``; None where the side is not swept."""
    if side == "generator":
        return generate(cfg), uses_nodsp(cfg)
    if side == "sign_negate":  # the other sign style, at a few points (the default's justification)
        swept = PE_KINDS[cfg.kind].sign_in_sum != "" and cfg.abits == 4 and cfg.simd in (4, 16)
        return (reference(cfg, sign="negate"), True) if swept else None
    if side == "dsp_default":
        return (reference(cfg), False) if cfg.kind == MULTIPLY_KINDS["lut"] and cfg.simd == 1 else None
    return reference(cfg), uses_nodsp(cfg)


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def load_reference_records(path: Path = RECORDS_PATH) -> dict[str, Any]:
    """The stored document (an empty one when there is none)."""
    if path.exists():
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return doc
    return {"version": 1, "tool": "", "family": "xc7", "records": []}


def run_reference_sweep(cfgs: list[PeConfig] | None = None, *, jobs: int = 2, generator_only: bool = False,
                        path: Path | None = RECORDS_PATH,
                        progress: Callable[[str, str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Synthesize what changed since the records at ``path`` (see the module docstring); the document,
    also written to ``path`` after every synthesis (so an interrupted run resumes)."""
    cfgs = reference_sweep() if cfgs is None else cfgs
    old = {r["name"]: r for r in load_reference_records(path)["records"]} if path is not None else {}
    recs: dict[str, dict[str, Any]] = {}
    todo: list[tuple[PeConfig, str, str, bool]] = []
    for cfg in cfgs:
        prev = old.get(cfg.name, {})
        rec: dict[str, Any] = {"name": cfg.name, "pe": cfg.to_dict()}
        for side in SIDES:
            got = _side(cfg, side)
            if got is None:
                continue
            src, nodsp = got
            stored = prev if side == "reference" else prev.get(side)
            timed = stored and "arrival_ps" in stored
            keep = stored and ("lut" in stored) and ((stored.get("source_sha1") == _sha(src) and timed)
                                                     or (generator_only and side != "generator"))
            if keep:
                _put(rec, side, stored)
            else:
                todo.append((cfg, side, src, nodsp))
        recs[cfg.name] = rec
    todo.sort(key=lambda j: SIDES.index(j[1]))  # the references first: the generator side may still change
    doc: dict[str, Any] = {"version": 1, "tool": yosys_version(), "family": "xc7", "records": []}
    lock = threading.Lock()

    def one(job: tuple[PeConfig, str, str, bool]) -> None:
        cfg, side, src, nodsp = job
        r = synthesize_verilog(src, cfg.name, nodsp=nodsp, timing=True)
        body = {"flow": "nodsp" if nodsp else "default", "source_sha1": _sha(src), **r.to_dict()}
        if side != "generator" and PE_KINDS[cfg.kind].sign_in_sum != "":
            body["sign"] = "negate" if side == "sign_negate" else DEFAULT_SIGN
        with lock:
            _put(recs[cfg.name], side, body)
            doc["records"] = [recs[c.name] for c in cfgs]
            if path is not None:
                atomic_write_json(path, doc)
            if progress:
                progress(cfg.name, side, body)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        list(ex.map(one, todo))
    doc["records"] = [recs[c.name] for c in cfgs]
    if path is not None:
        atomic_write_json(path, doc)
    return doc


def _put(rec: dict[str, Any], side: str, body: dict[str, Any]) -> None:
    if side == "reference":
        rec.update({k: v for k, v in body.items() if k not in ("generator", "dsp_default", "name", "pe")})
    else:
        rec[side] = body


# ---- the judgement: the model against the cheaper circuit that keeps the clock ----

RES = ("lut", "ff", "dsp", "carry")


def _err(model: float, truth: float) -> float:
    return abs(model - truth) / max(truth, 1.0)


def clock_budget(doc: dict[str, Any]) -> int:
    """The longest path (ps) of the slowest generated dot unit: the clock a circuit must keep."""
    return max(r["generator"]["arrival_ps"] for r in doc["records"]
               if "generator" in r and "arrival_ps" in r["generator"] and PE_KINDS[r["pe"]["kind"]].is_dot)


def compare(doc: dict[str, Any], model: CostModel) -> list[dict[str, Any]]:
    """One row per PE with both sides synthesized (and timed)."""
    budget = clock_budget(doc)
    rows = []
    for r in doc["records"]:
        g = r.get("generator")
        if g is None or "lut" not in r or "lut" not in g:
            continue
        cfg = PeConfig.from_dict(r["pe"])
        ref = {k: r[k] for k in (*RES, "arrival_ps")}
        gen = {k: g[k] for k in (*RES, "arrival_ps")}
        # different DSP counts are different mappings, not cheaper or dearer: the generator's stands
        smaller = ref["dsp"] == gen["dsp"] and ref["lut"] < gen["lut"]
        keeps = ref["arrival_ps"] <= budget
        cheaper = "reference" if smaller and keeps else "generator"
        best = ref if cheaper == "reference" else gen
        fewest = ref if smaller else gen  # by LUTs alone
        p = model.pe(cfg)
        row = {"name": r["name"], "kind": cfg.kind, "simd": cfg.simd, "pe": r["pe"], "generator": gen,
               "reference": ref, "cheaper": cheaper, "ref_over_gen_lut": ref["lut"] / max(gen["lut"], 1),
               "ref_keeps_clock": keeps, "ref_smaller_but_slower": smaller and not keeps,
               "model": {"lut": round(p.lut, 1), "ff": round(p.ff, 1), "dsp": p.dsp},
               "lut_err": _err(p.lut, best["lut"]), "ff_err": _err(p.ff, best["ff"]),
               "lut_err_lut_only": _err(p.lut, fewest["lut"]),
               "lut_err_gen": _err(p.lut, gen["lut"]), "dsp_ok": p.dsp == best["dsp"],
               "other_mapping": ref["dsp"] != gen["dsp"]}
        if "sign_negate" in r:
            row["sign_negate"] = {k: r["sign_negate"][k] for k in RES}
        if "dsp_default" in r:
            d = r["dsp_default"]
            row["dsp_default"] = {k: d[k] for k in RES}
            row["dsp_rule"] = mul_dsps(cfg.wbits, cfg.abits + 1, cfg.product_bits)
        rows.append(row)
    return rows
