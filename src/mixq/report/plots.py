"""Plots for the report, returned as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

SPARSE = 64  # up to this many levels in view: full-height lines; more: a ruler of ticks under the bars
RULER = 16  # a dense grid's ruler marks every 16th level with a long tick
_COLORS = ("#cc3311", "#009988", "#ee7733", "#aa3377")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def visible_levels(levels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The levels inside ``[lo, hi]`` (the weights' range): what a histogram draws."""
    lv = np.asarray(levels, dtype=np.float64).ravel()
    return lv[(lv >= lo) & (lv <= hi)]


def _every(levels: np.ndarray, shown: np.ndarray, k: int) -> np.ndarray:
    """Which of ``shown`` (a subset of ``levels``) are every ``k``-th level counted from the one nearest zero."""
    lv = np.sort(np.asarray(levels, dtype=np.float64).ravel())
    zero = int(np.argmin(np.abs(lv)))
    idx = np.searchsorted(lv, shown)
    return np.asarray((idx - zero) % k == 0)


@dataclass(frozen=True)
class HistPanel:
    """One panel of a layer's histogram: a design's row formats, their levels (at a representative
    scale) and a legend label per format."""

    title: str
    levels: Sequence[np.ndarray] = ()
    labels: Sequence[str] = field(default_factory=tuple)


def _draw_panel(ax: Axes, w: np.ndarray, panel: HistPanel) -> list[int]:
    """Histogram of ``w`` with every format's levels inside the weights' range; returns how many each drew."""
    lo, hi = float(w.min()), float(w.max())
    pad = 0.02 * max(hi - lo, 1e-12)
    counts, _, _ = ax.hist(w, bins=80, color="#4477aa", alpha=0.8)
    top = float(np.max(counts)) if np.size(counts) else 1.0
    ax.set_xlim(lo - pad, hi + pad)
    views = [visible_levels(lv, lo - pad, hi + pad) for lv in panel.levels]
    band = 0.16 * top  # below the bars: one strip per dense format
    dense = 0
    for i, v in enumerate(views):
        lab = panel.labels[i] if i < len(panel.labels) else ""
        if v.size == 0:
            continue
        color = _COLORS[i % len(_COLORS)]
        if v.size <= SPARSE:  # a coarse grid: lines across the histogram
            ax.vlines(v, 0, 1, transform=ax.get_xaxis_transform(), colors=color, lw=0.6, alpha=0.7, label=lab)
            continue
        # a dense grid (7 bits and wider): a ruler in a strip under the bars, every level a short tick,
        # every 16th level (counted from the one nearest zero) a long one
        dense += 1
        y0, y1 = -dense * band + 0.08 * band, -(dense - 1) * band - 0.08 * band
        major = _every(panel.levels[i], v, RULER)
        ax.vlines(v[~major], y0 + 0.45 * (y1 - y0), y1, colors=color, lw=0.35, alpha=0.75, label=lab)
        ax.vlines(v[major], y0, y1, colors=color, lw=0.9)
    ax.set_ylim(-dense * band, top * 1.05)
    drawn = [int(v.size) for v in views]
    ax.set_yticks([])
    ax.tick_params(labelsize=7)
    ax.set_title(panel.title, fontsize=8, loc="left")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper right", framealpha=0.8)
    return drawn


def histogram_figure(name: str, weights: np.ndarray, panels: Sequence[HistPanel]) -> tuple[Figure, list[list[int]]]:
    """A layer's float weights, one panel per design with its levels; also how many levels each panel drew."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(n, 1, figsize=(4.8, 0.6 + 1.35 * n), sharex=True, squeeze=False)
    drawn = [_draw_panel(axes[i][0], w, p) for i, p in enumerate(panels or [HistPanel("")])]
    fig.suptitle(name, fontsize=9, x=0.02, ha="left")
    fig.tight_layout(h_pad=1.6)
    return fig, drawn


def layer_histograms(name: str, weights: np.ndarray, panels: Sequence[HistPanel]) -> tuple[bytes, list[list[int]]]:
    """`histogram_figure` as PNG bytes, with the level counts drawn per panel and format."""
    fig, drawn = histogram_figure(name, weights, panels)
    return _png(fig), drawn


def weight_histogram(name: str, weights: np.ndarray, levels: Sequence[np.ndarray] = (),
                     labels: Sequence[str] = ()) -> bytes:
    """One histogram of a layer's float weights with each format's levels (sparse: lines; dense: a rug)."""
    return layer_histograms(name, weights, [HistPanel("", levels, labels)])[0]


@dataclass(frozen=True)
class Point:
    """A design in the trade-off plot: frames/s, top-1 (%), and its role (``chosen``, ``uniform``, ``design``)."""

    label: str
    fps: float
    accuracy: float
    role: str = "design"


def _points(ax: Axes, pts: Sequence[Point]) -> None:
    style = {"chosen": dict(marker="*", s=160, c="#1b7a2e", zorder=4),
             "uniform": dict(marker="s", s=36, c="#cc3311", zorder=3),
             "design": dict(marker="o", s=36, c="#4477aa", zorder=3)}
    for role, kw in style.items():
        sel = [p for p in pts if p.role == role]
        if sel:
            ax.scatter([p.fps for p in sel], [p.accuracy for p in sel], label=role, **kw)  # type: ignore[arg-type]
    for p in pts:
        ax.annotate(p.label, (p.fps, p.accuracy), fontsize=7, xytext=(4, 4), textcoords="offset points")


def tradeoff_plot(title: str, front: Sequence[tuple[float, float]], train: Sequence[Point], train_ref: float,
                  threshold: float | None, test: Sequence[Point], test_ref: float) -> bytes:
    """Accuracy vs frames/s. Left: the search on training images (Pareto front, the chosen plan, uniform
    baselines, the float reference and the allowed drop). Right: every design on the test images."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    if front:
        f = sorted(front)
        a.plot([x for x, _ in f], [y for _, y in f], "-o", c="#4477aa", ms=3, lw=1, label="Pareto front")
    _points(a, train)
    a.axhline(train_ref, c="gray", ls="--", lw=0.8, label="FP32")
    if threshold is not None:
        a.axhline(threshold, c="#cc3311", ls=":", lw=0.8, label="allowed drop")
    a.set_title("search (training images)", fontsize=9)
    _points(b, test)
    b.axhline(test_ref, c="gray", ls="--", lw=0.8, label="FP32")
    b.set_title("designs (test images)", fontsize=9)
    for ax in (a, b):
        ax.set_xlabel("frames/s", fontsize=8)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
