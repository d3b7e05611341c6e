"""Table rows of the run report: per-layer designs, verification, and any RTL results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mixq.plan import LayerPlan, QuantPlan
from mixq.report.html import Html, esc, table_html

LAYER_HEADER = ("layer", "kind", "weights (row share)", "input act", "core", "PE×SIMD", "cycles/frame",
                "LUT", "DSP", "BRAM36", "")
MARK = "★"


def weight_label(lp: LayerPlan | None, rows: int | None) -> str:
    """The layer's weight formats with their row shares, e.g. ``fixed4n 50% / sp2_4 50%``."""
    if lp is None or lp.weight is None:
        return "float"
    if lp.weight_alt is None:
        return str(lp.weight)
    f = lp.alt_fraction(rows) if rows else float(lp.alt_ratio)
    return f"{lp.weight} {100 * (1 - f):.0f}% / {lp.weight_alt} {100 * f:.0f}%"


def cores(formats: str) -> str:
    """The cores named in an estimate's ``formats`` string:
    ``fixed4n@fixed_dsp2 50% + sp2_4@sp2 50%`` → ``fixed_dsp2 / sp2``."""
    kinds = [g.split("@", 1)[1].split(" ")[0] for g in formats.split(" + ") if "@" in g]
    return " / ".join(kinds) if kinds else "—"


def bottleneck_layers(hw: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> set[str]:
    """The layers that set the frame rate (most cycles per frame); none when DDR streaming or the stream ports do."""
    if str(hw.get("bottleneck", "")).startswith(("DDR", "the stream ports")) or not layers:
        return set()
    top = max(int(ly["cycles"]) for ly in layers)
    return {str(ly["name"]) for ly in layers if int(ly["cycles"]) == top}


def layer_rows(hw: Mapping[str, Any], layers: Sequence[Mapping[str, Any]], plan: QuantPlan,
               rows: Mapping[str, int]) -> tuple[list[list[Any]], list[str]]:
    """One row per hardware layer (compute and pooling), and each row's CSS class (``bottleneck``)."""
    slow = bottleneck_layers(hw, layers)
    out, classes = [], []
    for ly in layers:
        name, res = str(ly["name"]), ly["resources"]
        lp = plan.get(name)
        compute = int(ly.get("macs", 0)) > 0
        act = str(lp.act) if lp is not None and lp.act is not None else ("float" if compute else "—")
        out.append([name, ly["kind"], weight_label(lp, rows.get(name)) if compute else "—", act,
                    cores(str(ly.get("formats", ""))) if compute else "—",
                    f"{ly['pe']}×{ly['simd']}" if compute else "—", int(ly["cycles"]), round(float(res["lut"])),
                    round(float(res["dsp"])), float(res["bram"]), MARK if name in slow else ""])
        classes.append("bottleneck" if name in slow else "")
    return out, classes


def hw_note(hw: Mapping[str, Any]) -> str:
    r, u = hw["resources"], hw["utilization"]
    use = ", ".join(f"{k.upper()} {r[k]:,.0f} ({100 * u[k]:.0f}%)" for k in ("lut", "dsp", "bram"))
    fit = "fits" if hw["fits"] else "does NOT fit: " + "; ".join(hw.get("overflows", []))
    return (f"{MARK} bottleneck: {hw['bottleneck']}. Design total on {hw['part']} ({hw['arch']}, "
            f"{hw['clock_mhz']:g} MHz, shell included): {use}; {hw['fps']:,.1f} frames/s, latency "
            f"{hw['latency_ms']:.3f} ms; {fit}. Layer rows leave out the shell and control logic.")


_VERIFY = (("images", "images"), ("exact", "bit-exact: integer engine == hardware-faithful fake quant"),
           ("mismatching_outputs", "mismatching output elements"),
           ("argmax_agreement_faithful", "argmax agreement with hardware-faithful fake quant"),
           ("argmax_agreement", "argmax agreement with ordinary fake quant"),
           ("max_abs_diff_fakequant", "max |engine − fake quant| (logits)"),
           ("max_abs_output_fakequant", "max |logit|"), ("saturated", "saturated layers"),
           ("rounding", "rounding"), ("mult_bits", "requantization multiplier bits"))


def _verdict_cell(v: Any, good: bool) -> Html:
    return Html(f'<span class="{"good" if good else "bad"}">{esc(v)}</span>')


def verify_rows(checks: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[list[str], list[list[Any]]]:
    """``checks``: (design label, verify result) pairs; one column per design, one row per check."""
    header = ["check", *[label for label, _ in checks]]
    rows: list[list[Any]] = []
    for key, text in _VERIFY:
        if not any(key in v for _, v in checks):
            continue
        cells: list[Any] = [text]
        for _, v in checks:
            x = v.get(key, "—")
            if key == "exact":
                x = _verdict_cell("yes" if x is True else "NO", x is True)
            elif key == "mismatching_outputs":
                x = _verdict_cell(f"{x:,} of {v.get('total_outputs', 0):,}", x == 0)
            elif key == "saturated":
                x = (", ".join(f"{k}: {n}" for k, n in x.items()) or "none") if isinstance(x, dict) else x
            cells.append(x)
        rows.append(cells)
    return header, rows


def generic_html(obj: Any, depth: int = 0) -> str:
    """Any JSON-like result (e.g. the RTL section of a summary) as tables: scalars as figure/value rows,
    lists of records as one table, nested mappings as sub-sections."""
    if isinstance(obj, Mapping):
        scalars = [[k, _scalar(v)] for k, v in obj.items() if not isinstance(v, Mapping | list)]
        parts = [table_html(["figure", "value"], scalars)] if scalars else []
        for k, v in obj.items():
            if isinstance(v, Mapping | list) and depth < 3:
                parts.append(f"<h3>{esc(k)}</h3>{generic_html(v, depth + 1)}")
        return "".join(parts)
    if isinstance(obj, list):
        if obj and all(isinstance(r, Mapping) for r in obj):
            keys: list[str] = []
            for r in obj:
                keys += [k for k in r if k not in keys]
            return table_html(keys, [[_scalar(r.get(k, "")) for k in keys] for r in obj])
        return f"<p>{esc(', '.join(str(_scalar(v)) for v in obj))}</p>"
    return f"<p>{esc(_scalar(obj))}</p>"


def _scalar(v: Any) -> Any:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, Mapping | list):
        return ", ".join(f"{k}: {x}" for k, x in v.items()) if isinstance(v, Mapping) else ", ".join(map(str, v))
    return v
