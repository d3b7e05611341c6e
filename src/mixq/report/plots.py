"""Plots for the report, returned as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig: plt.Figure) -> bytes:  # type: ignore[name-defined]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def weight_histogram(name: str, weights: np.ndarray, levels: Sequence[np.ndarray] = (),
                     labels: Sequence[str] = ()) -> bytes:
    """Histogram of a layer's float weights, with each row format's levels (at the median row scale) as ticks."""
    fig, ax = plt.subplots(figsize=(4.2, 2.4))
    w = np.asarray(weights, dtype=np.float64).ravel()
    ax.hist(w, bins=80, color="#4477aa", alpha=0.85)
    colors = ["#cc3311", "#009988", "#ee7733"]
    for i, lv in enumerate(levels):
        if np.asarray(lv).size > 64:  # too dense to draw: 7-bit and wider formats
            continue
        lab = labels[i] if i < len(labels) else None
        for j, v in enumerate(np.asarray(lv).ravel()):
            ax.axvline(float(v), color=colors[i % len(colors)], lw=0.6, alpha=0.7, label=lab if j == 0 else None)
    ax.set_title(name, fontsize=9)
    ax.set_yticks([])
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:  # no level drawn (all too dense): no legend to show
        ax.legend(fontsize=6, loc="upper right")
    return _png(fig)


def bar_chart(title: str, names: Sequence[str], values: Sequence[float], ylabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(names)), 2.6))
    ax.bar(range(len(names)), values, color="#4477aa")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return _png(fig)
