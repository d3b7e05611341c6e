"""`mixq search`: a thin wrapper over :func:`mixq.algorithms.search.search_plan`."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def search_cmd(
    model: str = typer.Argument(..., help="bundled model: cnv or mobilenet_v2"),
    part: str = typer.Option("xc7z020", help="FPGA part"),
    target_fps: float = typer.Option(None, "--target-fps", help="frames/s to reach (most accurate plan that does)"),
    max_drop: float = typer.Option(None, "--max-drop", help="accuracy points to give up at most (fastest plan)"),
    out: Path = typer.Option(Path("runs/search"), help="folder for plan.json, pareto.json, pareto.png"),
    executor: str = typer.Option("process", help="candidate evaluation: serial, process or ray"),
    workers: int = typer.Option(2, help="parallel evaluations"),
    points: int = typer.Option(4, help="frame-rate sweep points besides the baselines' rates"),
    method: str = typer.Option("hessian", help="sensitivity: hessian (HAWQ) or measured"),
    calib_images: int = typer.Option(256, help="calibration images"),
    eval_images: int = typer.Option(1000, help="evaluation images"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "mixq" / "search", help="sensitivity cache"),
    pretrained: bool = typer.Option(True, help="load the zoo's trained weights"),
) -> None:
    """Search per-layer bits, scheme (SP2 ratio) and folding for MODEL on PART; write the plan and Pareto front."""
    from mixq.algorithms.search import SearchConfig, SensitivityConfig, search_plan
    from mixq.algorithms.search.output import write_outputs
    from mixq.algorithms.search.tasks import bundled_task

    m, calib, eval_fn = bundled_task(model, pretrained, calib_images, eval_images)
    cfg = SearchConfig(sensitivity=SensitivityConfig(method=method), points=points, executor=executor,
                       workers=workers, cache_dir=str(cache_dir))
    res = search_plan(model, m, calib, eval_fn, part, target_fps=target_fps, max_drop=max_drop, cfg=cfg)
    paths = write_outputs(res, out)
    rows = [res.chosen, *res.baselines.values()]
    typer.echo(json.dumps({"chosen": res.chosen.label, "reference_accuracy": round(res.reference_accuracy, 3),
                           "compare": [{"label": p.label, "fps": round(p.fps, 1), "accuracy": round(p.accuracy, 3),
                                        "lut": p.resources.get("lut"), "dsp": p.resources.get("dsp")}
                                       for p in rows],
                           "best_reachable_fps": round(res.best_fps, 1),
                           "timings_s": {k: round(v, 2) for k, v in res.timings.items()}}, indent=2))
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


def register(app: typer.Typer) -> None:
    app.command("search")(search_cmd)
