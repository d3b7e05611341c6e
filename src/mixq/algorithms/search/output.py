"""Files of a search: ``plan.json`` (the chosen plan), ``pareto.json`` and ``pareto.png``."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mixq.algorithms.search.driver import SearchResult  # noqa: E402
from mixq.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from mixq.plan import save_plan  # noqa: E402


def pareto_png(result: SearchResult) -> bytes:
    """Accuracy vs FPS and vs LUTs: searched points, the Pareto front, the uniform baselines, the choice."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key, xlabel in ((axes[0], "fps", "frames/s"), (axes[1], "lut", "LUTs")):
        def xs(pts: list, key: str = key) -> list[float]:  # type: ignore[type-arg]
            return [p.fps if key == "fps" else p.resources.get("lut", 0.0) for p in pts]

        s = [p for p in result.points if p.kind == "searched" and p.fits]
        u = [p for p in result.points if p.kind == "uniform" and p.fits]
        ax.scatter(xs(s), [p.accuracy for p in s], c="tab:blue", label="searched", s=20)
        front = result.pareto
        if key == "fps":
            ax.plot(xs(front), [p.accuracy for p in front], c="tab:blue", lw=1)
        ax.scatter(xs(u), [p.accuracy for p in u], c="tab:red", marker="s", label="uniform", s=30)
        for p in u:
            ax.annotate(p.label.removeprefix("uniform "), (xs([p])[0], p.accuracy), fontsize=7)
        ax.scatter(xs([result.chosen]), [result.chosen.accuracy], facecolors="none", edgecolors="k", s=120,
                   label="chosen")
        ax.axhline(result.reference_accuracy, c="gray", ls="--", lw=0.8, label="float")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result.plan.model} on {result.part}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(result: SearchResult, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"plan": out / "plan.json", "pareto": out / "pareto.json", "plot": out / "pareto.png"}
    if result.met:  # a search that missed its target writes its points, not a plan to build
        save_plan(result.plan, paths["plan"])
    else:
        del paths["plan"]
    atomic_write_json(paths["pareto"], result.to_dict())
    atomic_write_bytes(paths["plot"], pareto_png(result))
    return paths
