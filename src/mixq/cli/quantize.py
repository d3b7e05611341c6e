"""`mixq quantize`: post-training quantization of a zoo or builder model with a plan and a named recipe.

    mixq quantize mobilenet_v2 --plan plan.json --calib photos/ --recipe dfq --out runs/mnv2-dfq
    mixq quantize mynet.py:build --weights w.pt --input-shape 3,32,32 --calib photos --out runs/q
    mixq quantize cnv --calib shipped --recipe adaround --msq 0.5
    mixq quantize cnv --recipe gptq --msq 0.5 --msq-rows output_auto
    mixq quantize mobilenet_v2 --calib train_subset/ --eval val/ --input-size 224 --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5

``--calib`` and ``--eval`` take a folder of images, an .npz file or a keyword, preprocessed for the model's
input (:class:`mixq.data.sources.Preprocess`; ``--input-size``, ``--mean``, ``--std``, ``--grayscale/--rgb``
override it). ``--eval`` reports top-1 of the float and the quantized model on labelled data, else their
argmax agreement.

Writes the artifact folder (:func:`mixq.artifact.save_artifact`, each file atomically):
``quantized.pt`` (state dict, plan and recipe), ``plan.json`` (the plan as applied, MSQ rows filled
in) and ``summary.json`` (recipe, timings, per-layer formats, sizes). ``mixq verify``, ``export``,
``estimate`` and ``rtl`` take the folder with ``--from`` and use that model as it is.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import typer

from mixq.cli._common import (
    INPUT_SHAPE,
    MODEL_HELP,
    WEIGHTS,
    choice,
    count,
    emit,
    load_model,
    model_source,
    out_dir,
    real,
)
from mixq.errors import OptionError

RECIPES = ("minmax", "dfq", "dfq_empirical", "adaround", "gptq", "datafree")


def _size(value: str | None) -> tuple[int, int] | None:
    """``--input-size H`` or ``HxW`` (checked at parse time: a bad value is a usage error)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", value)
    if m is None or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise typer.BadParameter(f"must be H or HxW with integers >= 1, got {value!r}")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _values(value: str | None) -> tuple[float, ...] | None:
    """``--mean`` / ``--std``: comma-separated finite numbers, one per channel."""
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value.split(","))
    except ValueError:
        vals = ()
    if not vals or not all(math.isfinite(v) for v in vals):
        raise typer.BadParameter(f"must be comma-separated finite numbers (one per channel), got {value!r}")
    return vals


def load_source(source: str, pre: Any, limit: int | None, option: str, shape: tuple[int, ...] = ()) -> Any:
    """The images of a ``--calib`` / ``--eval`` source (:func:`mixq.data.sources.load_images`): the
    keywords take their first ``limit`` images, a folder or an .npz file a seeded random subset (so a
    folder of class subfolders gives every class). With ``pre`` None (a 1-D model of input ``shape``),
    the signals of an .npz (:func:`mixq.data.sources.load_signals`)."""
    from mixq.data.sources import KEYWORDS, load_images, load_signals

    seed = None if source in KEYWORDS else 0
    if pre is None:
        return load_signals(source, shape, limit, seed=seed, name=f"{option} {source}")
    return load_images(source, pre, limit, seed=seed, name=f"{option} {source}")


def recorded_data(summary: dict[str, Any]) -> tuple[str | None, str | None, Any]:
    """``(calibration source, --eval source, Preprocess or None)`` a quantize ``summary.json`` records (None
    for what it does not record; a 1-D model records no preprocessing)."""
    from mixq.data.sources import Preprocess

    cal = summary.get("calibration") or {}
    pre_d = cal.get("preprocess")
    source, evalsrc = cal.get("source"), (summary.get("eval") or {}).get("source")
    return (source if isinstance(source, str) else None, evalsrc if isinstance(evalsrc, str) else None,
            Preprocess(**pre_d) if isinstance(pre_d, dict) else None)


def _jsonable(obj: Any) -> Any:
    """Numbers, strings, lists and dicts of them (tensors and other values become strings/lists)."""
    import torch

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, int | float | str | bool) or obj is None:
        return obj
    return str(obj)


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        model: str = typer.Argument(..., help=MODEL_HELP),
        weights: str | None = WEIGHTS,
        input_shape: str | None = INPUT_SHAPE,
        plan: Path | None = typer.Option(None, "--plan", help="QuantPlan JSON (default: W8A8 per channel)"),
        calib: str = typer.Option("auto", "--calib", help="image folder (flat or class subfolders), .npz file "
                                                          "(x/images [, y/labels]), 'shipped' (bundled Fashion-MNIST "
                                                          "train images), 'shipped-test', 'photos' (bundled natural "
                                                          "photos) or 'auto' (the model's kind)"),
        eval_source: str | None = typer.Option(None, "--eval", help="also report on this source (same kinds as "
                                               "--calib): top-1 of the float and quantized model when it has labels "
                                               "(class subfolders in the model's class order, .npz labels), else "
                                               "argmax agreement of the quantized model with the float one"),
        input_size: str | None = typer.Option(None, "--input-size", help="images resized to H or HxW (default: "
                                              "the model's input)", callback=_size),
        mean: str | None = typer.Option(None, "--mean", help="per-channel mean, a,b,c (default: ImageNet for RGB, "
                                        "Fashion-MNIST for gray)", callback=_values),
        std: str | None = typer.Option(None, "--std", help="per-channel std, a,b,c", callback=_values),
        gray: bool | None = typer.Option(None, "--grayscale/--rgb", help="color mode the model takes (default: "
                                         "its input channels)"),
        recipe: str = choice("minmax", "PTQ recipe", RECIPES, "--recipe"),
        out: Path | None = typer.Option(None, "--out", help="output folder (default runs/quantize-MODEL)"),
        images: int = count(256, "calibration images to use", 1, "--images"),
        msq: float | None = real(None, "no --plan: 4-bit MSQ plan with this SP2 row ratio", 0.0, 1.0, "--msq",
                                 low_open=False),
        pretrained: bool = typer.Option(True, "--pretrained/--random", help="real weights or random init"),
        weight_scales: str | None = choice(None, "weight scales: the plan's observer, searched per row on the "
                                           "output error, or output below 8 bits (default: the recipe's)",
                                           ("plan", "output", "auto"), "--weight-scales"),
        act_ranges: str | None = choice(None, "activation ranges: the plan's observer or tuned on each layer's "
                                        "output error (default: the recipe's; output for dfq, dfq_empirical)",
                                        ("observer", "output"), "--act-ranges"),
        msq_rows: str | None = choice(None, "MSQ plans only: rows as assigned, the same count re-chosen on the "
                                      "output error, or each row the format with the smaller output error",
                                      ("plan", "output", "output_auto"), "--msq-rows"),
    ) -> None:
        """Quantize MODEL with a plan and a PTQ recipe; write the checkpoint and a summary."""
        src = model_source(model, weights, input_shape)
        model = src.name
        folder = out_dir(out, "quantize", model)
        if msq is not None and plan is not None:
            raise OptionError("--msq builds a plan; give either --msq or --plan, not both")
        from mixq import api
        from mixq.algorithms.msq import MSQConfig, msq_plan
        from mixq.algorithms.ptq import quantize_report
        from mixq.artifact import save_artifact
        from mixq.cli._common import load_checked_plan
        from mixq.data.sources import Preprocess
        from mixq.graph.capture import capture

        shape = src.shape()
        signal = len(shape) < 3  # a 1-D model: (C, L) or (L,) arrays from an .npz, fed as they are
        if signal:
            given = [o for o, v in (("--input-size", input_size), ("--mean", mean), ("--std", std),
                                    ("--grayscale/--rgb", gray)) if v is not None]
            if given:
                raise OptionError(f"{', '.join(given)}: {model} takes 1-D signals ({','.join(map(str, shape))}); "
                                  "image preprocessing does not apply")
            pre = None
        else:
            try:
                pre = Preprocess.for_input(shape, size=input_size, mean=mean, std=std,  # type: ignore[arg-type]
                                           channels=None if gray is None else (1 if gray else 3))
            except OptionError as e:  # "mean: ..." -> "--mean: ..."
                field, _, rest = str(e).partition(":")
                raise OptionError(f"--{ {'size': 'input-size'}.get(field, field)}:{rest}") from None
            if pre.channels != shape[0]:
                raise OptionError(f"--{'grayscale' if gray else 'rgb'}: {model} takes {shape[0]}-channel input")
        net = load_model(src, pretrained=pretrained, fallback=False)
        if calib == "auto":  # the model's own kind of data: gray Fashion-MNIST or ImageNet-style photos
            if pre is None:
                raise OptionError(f"--calib: give an .npz of ({', '.join(map(str, shape))}) signals for {model}")
            calib = "shipped" if pre.channels == 1 else "photos"
        data = load_source(calib, pre, images, "--calib", shape).x
        if pre is not None and pre.size != tuple(shape[1:]):  # e.g. a fully convolutional model at another size
            try:
                api.predict(net, data[:1])
            except RuntimeError as e:
                raise OptionError(f"--input-size {pre.size[0]}x{pre.size[1]}: {model} cannot take "
                                  f"{pre.channels}x{pre.size[0]}x{pre.size[1]} inputs "
                                  f"({str(e).splitlines()[0]})") from None
            shape = (pre.channels, *pre.size)
        evalset = load_source(eval_source, pre, None, "--eval", shape) if eval_source is not None else None
        if plan is not None:
            qplan = load_checked_plan(plan, model, capture(net, shape))
        elif msq is not None:
            qplan = msq_plan(model, net, data[:8], MSQConfig(ratio=msq))
        else:
            qplan = api.default_plan(model, net, data[:8])
        if msq_rows is not None and not any(lp.weight_alt is not None for _, lp in qplan.items()):
            raise OptionError("--msq-rows: the plan has no second row format (MSQ); give --msq RATIO or an MSQ "
                              "--plan, or drop --msq-rows")
        t = time.perf_counter()
        overrides = {k: v for k, v in (("weight_scales", weight_scales), ("act_ranges", act_ranges),
                                       ("msq_rows", msq_rows)) if v is not None}
        res = quantize_report(net, qplan, data, recipe, input_shape=shape, **overrides)
        seconds = time.perf_counter() - t
        lines = []
        evaluation: dict[str, Any] | None = None
        if evalset is not None:
            if evalset.labelled:
                evaluation = {"top1_float": api.evaluate(net, evalset), "top1_quant": api.evaluate(res.model, evalset)}
                lines.append(f"--eval {eval_source}: top-1 {evaluation['top1_quant']:.2f}% quantized, "
                             f"{evaluation['top1_float']:.2f}% float on {len(evalset)} images")
            else:
                same = api.predict(res.model, evalset.x).argmax(1) == api.predict(net, evalset.x).argmax(1)
                evaluation = {"agreement": 100.0 * float(same.float().mean())}
                lines.append(f"--eval {eval_source}: argmax agreement with the float model "
                             f"{evaluation['agreement']:.2f}% on {len(evalset)} unlabelled images")
            evaluation = {"source": eval_source, "images": len(evalset), **evaluation}
        summary = {
            "model": model, "source": src.to_dict(), "pretrained": pretrained, "recipe": res.recipe.to_dict(),
            "calibration": {"source": calib, "images": int(data.shape[0]), "preprocess": None if pre is None else {
                "size": list(pre.size), "channels": pre.channels, "mean": list(pre.mean), "std": list(pre.std),
                "resize": pre.resize}},
            **({"eval": evaluation} if evaluation is not None else {}),
            "plan": str(plan) if plan is not None else ("msq" if msq is not None else "default W8A8"),
            "wall_time_s": round(seconds, 3), "timings_s": {k: round(v, 3) for k, v in res.timings.items()},
            "details": _jsonable(res.details), "layers": api.layer_formats(res.model),
            "size_bytes_fp32": api.model_size_bytes(net), "size_bytes_quant": api.model_size_bytes(res.model),
        }
        save_artifact(folder, model, res.plan, res.recipe.to_dict(), res.model, summary, source=src)
        emit({"out": str(folder), **summary},
             [f"{model}: recipe {res.recipe.name}, {data.shape[0]} calibration images, {seconds:.1f} s", *lines,
              f"wrote {folder / 'quantized.pt'}, {folder / 'plan.json'}, {folder / 'summary.json'}",
              f"use it as it is: mixq verify --from {folder}; mixq export --from {folder}"])
