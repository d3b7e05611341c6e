"""`mixq search`: a thin wrapper over :func:`mixq.algorithms.search.search_plan`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mixq.cli._common import FROM, choice, count, emit, out_dir, real
from mixq.cli.quantize import RECIPES
from mixq.errors import CheckFailed

TASKS = ("cnv", "mobilenet_v2")


def _widths(value: str | None) -> tuple[int | None, ...] | None:
    """``--residual-bits exact,12,8``: the residual-stream widths to try, checked at parse time."""
    if value is None:
        return None
    out: list[int | None] = []
    for part in value.split(","):
        p = part.strip().lower()
        if p == "exact":
            out.append(None)
        elif p.isdigit() and 2 <= int(p) <= 16:
            out.append(int(p))
        else:
            raise typer.BadParameter(f"must be a comma-separated list of 'exact' and integers in [2, 16] "
                                     f"(e.g. exact,12,8), got {value!r}")
    return tuple(dict.fromkeys(out))


def _checked_widths(value: str | None) -> str | None:
    _widths(value)
    return value


def search_cmd(
    model: str | None = typer.Argument(None, help="bundled model: cnv or mobilenet_v2 (or --from ARTIFACT)"),
    from_: Path | None = FROM,
    eval_source: str | None = typer.Option(None, "--eval", help="with --from: images to judge plans on (labelled: "
                                           "top-1; else argmax agreement with the float model)"),
    part: str = typer.Option("xc7z020", help="FPGA part"),
    target_fps: float | None = real(None, "frames/s to reach (most accurate plan that does)", 0.0, 1e12,
                                    "--target-fps"),
    max_drop: float | None = real(None, "accuracy points to give up at most (fastest plan)", 0.0, 100.0,
                                  "--max-drop", low_open=False),
    out: Path | None = typer.Option(None, "--out", help="folder for plan.json, pareto.json, pareto.png "
                                                        "(default runs/search-MODEL)"),
    executor: str = choice("process", "candidate evaluation", ("serial", "process", "ray")),
    workers: int = count(2, "parallel evaluations"),
    points: int = count(4, "frame-rate sweep points besides the baselines' rates", 0),
    method: str = choice("hessian", "sensitivity: HAWQ trace or measured", ("hessian", "measured")),
    calib_images: int = count(256, "calibration images"),
    eval_images: int = count(1000, "evaluation images"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "mixq" / "search", help="sensitivity cache"),
    pretrained: bool = typer.Option(True, help="load the zoo's trained weights"),
    residual_bits: str | None = typer.Option(
        None, "--residual-bits", callback=_checked_widths,
        help="residual-stream widths to try where the model has adds, each its own sweep: 'exact' and bits "
             "2..16, comma-separated (default exact,12,8)"),
    acc_bits: int = count(32, "accumulator width the hardware provides: options whose worst-case accumulator "
                          "passes it are left out (as `mixq verify --acc-bits`)", 2, maximum=63),
    recipe: str | None = choice(None, "PTQ recipe each candidate plan is quantized with to be judged (default: "
                                "with --from the artifact's own, else plan, min-max calibration; e.g. dfq for a "
                                "model min-max loses points on at 8 bits, at its cost per candidate)", RECIPES,
                                "--recipe"),
) -> None:
    """Search per-layer bits, scheme (SP2 ratio) and folding for MODEL (or a quantize --from ARTIFACT's model,
    data and preprocessing) on PART; write the plan and Pareto front.

    Exits 3 when no plan meets the constraint (--target-fps unreachable, or none within --max-drop).
    """
    from mixq.cli._common import exclusive_with_from, resolve_model
    from mixq.errors import OptionError

    resolve_model(model, from_, check=False)
    exclusive_with_from(from_, pretrained=not pretrained)
    if from_ is None and model not in TASKS:
        raise OptionError(f"search: model {model!r} has no bundled search task (one of {', '.join(TASKS)}); "
                          "quantize it first and give --from ARTIFACT")
    if eval_source is not None and from_ is None:
        raise OptionError("search: --eval goes with --from ARTIFACT (the bundled tasks bring their own data)")
    if target_fps is not None and max_drop is not None:
        raise OptionError("search: give --target-fps or --max-drop, not both")
    folder = out_dir(out, "search", model or Path(str(from_)).name)
    from mixq import progress
    from mixq.algorithms.search import SearchConfig, SensitivityConfig, search_plan
    from mixq.algorithms.search.driver import SearchUnmet
    from mixq.algorithms.search.output import write_outputs
    from mixq.algorithms.search.space import SearchSpace
    from mixq.hw import get_part
    from mixq.tasks.search import artifact_recipe, artifact_task, bundled_task

    get_part(part)
    if from_ is not None:
        model, m, calib, eval_fn = artifact_task(from_, calib_images, eval_images, eval_source)
        if recipe is None:
            recipe, overridden = artifact_recipe(from_)
            if overridden:
                progress.log("search recipe", recipe=recipe, note="the artifact's recipe overrides are not applied "
                             "to the candidates; give --recipe to choose")
    else:
        assert model is not None
        m, calib, eval_fn = bundled_task(model, pretrained, calib_images, eval_images)
    widths = _widths(residual_bits)
    space = SearchSpace() if widths is None else SearchSpace(residual_bits=widths)
    cfg = SearchConfig(space=space, sensitivity=SensitivityConfig(method=method), points=points, executor=executor,
                       workers=workers, cache_dir=str(cache_dir), acc_bits=acc_bits, recipe=recipe or "plan")
    try:
        res = search_plan(model, m, calib, eval_fn, part, target_fps=target_fps, max_drop=max_drop, cfg=cfg)
    except SearchUnmet as e:  # every plan was evaluated: keep the points, then fail the check
        kept = write_outputs(e.result, folder)
        raise CheckFailed(f"{e} (every evaluated point: {kept['pareto']})") from None
    paths = write_outputs(res, folder)
    rows = [res.chosen, *res.baselines.values()]
    result = {"chosen": res.chosen.label, "recipe": cfg.recipe, "eval_images": res.eval_images,
              "reference_accuracy": round(res.reference_accuracy, 3),
              "compare": [{"label": p.label, "fps": round(p.fps, 1), "accuracy": round(p.accuracy, 3),
                           "lut": p.resources.get("lut"), "dsp": p.resources.get("dsp"),
                           "residual_bits": p.plan.residual_bits} for p in rows],
              "best_reachable_fps": round(res.best_fps, 1),
              "timings_s": {k: round(v, 2) for k, v in res.timings.items()}, "out": str(folder)}
    emit(result, [json.dumps(result, indent=2), f"wrote {', '.join(str(p) for p in paths.values())}"])


def register(app: typer.Typer) -> None:
    app.command("search")(search_cmd)
