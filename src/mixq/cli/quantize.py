"""`mixq quantize`: post-training quantization of a zoo model with a plan and a named recipe.

    mixq quantize mobilenet_v2 --plan plan.json --calib photos/ --recipe dfq --out runs/mnv2-dfq
    mixq quantize cnv --calib shipped --recipe adaround --msq 0.5
    mixq quantize cnv --recipe gptq --msq 0.5 --msq-rows output_auto

Writes the artifact folder (:func:`mixq.artifact.save_artifact`, each file atomically):
``quantized.pt`` (state dict, plan and recipe), ``plan.json`` (the plan as applied, MSQ rows filled
in) and ``summary.json`` (recipe, timings, per-layer formats, sizes). ``mixq verify``, ``export``,
``estimate`` and ``rtl`` take the folder with ``--from`` and use that model as it is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mixq.cli._common import choice, count, emit, out_dir, real, zoo_model
from mixq.errors import DataError, OptionError

if TYPE_CHECKING:
    import torch

MIN_IMAGE_SIDE = 8
RECIPES = ("minmax", "dfq", "dfq_empirical", "adaround", "gptq", "datafree")


def load_calibration(calib: str, input_shape: tuple[int, ...], limit: int) -> torch.Tensor:
    """Calibration inputs: ``shipped`` (the bundled Fashion-MNIST training images), ``photos`` (the
    bundled natural photos, ImageNet-normalised), ``auto`` (whichever fits the model) or a folder of
    images (flat, or class subfolders), preprocessed for ``input_shape`` (C, H, W).

    The batch is checked at the door (:func:`mixq.validate.images`): NaN pixels, constant
    (e.g. all-black) images and images too small to calibrate on are refused, naming them.
    """
    import torch

    from mixq import data, validate
    from mixq.data.images import IMAGE_EXTENSIONS

    c, h, w = input_shape
    if calib == "auto":  # the model's own kind of data: gray Fashion-MNIST or ImageNet-style photos
        calib = "shipped" if c == 1 else "photos"
    if calib == "photos":
        if c != 3:
            raise DataError(f"--calib photos: the bundled photos are RGB; this model takes {input_shape}")
        x = data.calibration_set(limit, size=h, seed=0)
        validate.images(x, "--calib photos")
        return x
    if calib == "shipped":
        from mixq.run import CALIB_PATH

        if c != 1:
            raise DataError(f"--calib shipped: the bundled images are 1x28x28 gray; this model takes {input_shape}")
        images, _ = data.load_fmnist_subset(CALIB_PATH)
        x = data.normalize_gray(images[:limit])
        validate.images(x, "--calib shipped")
        return x
    root = Path(calib)
    if not root.is_dir():
        raise DataError(f"--calib: {root} is not a folder of images (or the keyword 'shipped')")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"--calib: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    out = []
    for f in files[:limit]:
        raw = data.read_image(f, "L" if c == 1 else "RGB")
        if min(raw.shape[:2]) < MIN_IMAGE_SIDE:
            raise DataError(f"--calib: {f} is {raw.shape[1]}x{raw.shape[0]} pixels; calibration images need at "
                            f"least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
        if c == 1:
            img = torch.as_tensor(raw, dtype=torch.float32)[None, None]
            img = torch.nn.functional.interpolate(img, size=(h, w), mode="bilinear", antialias=True,
                                                  align_corners=False)[0, 0]
            out.append(data.normalize_gray(img.round().clamp(0, 255).to(torch.uint8)[None])[0])
        elif c == 3:
            out.append(data.imagenet_preprocess(raw, resize=round(h * 256 / 224), crop=h))
        else:
            raise DataError(f"--calib: cannot read images for a {c}-channel input")
    x = torch.stack(out)
    validate.images(x, f"--calib {root}")
    return x


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
        model: str = typer.Argument(..., help="zoo model name (see `mixq capture`)"),
        plan: Path | None = typer.Option(None, "--plan", help="QuantPlan JSON (default: W8A8 per channel)"),
        calib: str = typer.Option("auto", "--calib", help="image folder (flat or class subfolders), 'shipped' "
                                                          "(bundled Fashion-MNIST), 'photos' (bundled natural "
                                                          "photos, ImageNet-normalised) or 'auto' (the model's kind)"),
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
        zoo_model(model)
        folder = out_dir(out, "quantize", model)
        if msq is not None and plan is not None:
            raise OptionError("--msq builds a plan; give either --msq or --plan, not both")
        from mixq import api, zoo
        from mixq.algorithms.msq import MSQConfig, msq_plan
        from mixq.algorithms.ptq import quantize_report
        from mixq.artifact import save_artifact
        from mixq.cli._common import load_checked_plan
        from mixq.graph.capture import capture

        shape = zoo.input_shape(model)
        net = zoo.load(model, pretrained=pretrained).eval()
        data = load_calibration(calib, shape, images)
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
        summary = {
            "model": model, "pretrained": pretrained, "recipe": res.recipe.to_dict(),
            "calibration": {"source": calib, "images": int(data.shape[0])},
            "plan": str(plan) if plan is not None else ("msq" if msq is not None else "default W8A8"),
            "wall_time_s": round(seconds, 3), "timings_s": {k: round(v, 3) for k, v in res.timings.items()},
            "details": _jsonable(res.details), "layers": api.layer_formats(res.model),
            "size_bytes_fp32": api.model_size_bytes(net), "size_bytes_quant": api.model_size_bytes(res.model),
        }
        save_artifact(folder, model, res.plan, res.recipe.to_dict(), res.model, summary)
        emit({"out": str(folder), **summary},
             [f"{model}: recipe {res.recipe.name}, {data.shape[0]} calibration images, {seconds:.1f} s",
              f"wrote {folder / 'quantized.pt'}, {folder / 'plan.json'}, {folder / 'summary.json'}",
              f"use it as it is: mixq verify --from {folder}; mixq export --from {folder}"])
