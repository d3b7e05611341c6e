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

from pathlib import Path
from typing import Any

import typer

from mixq.cli import _common as cli

# the names of mixq.algorithms.ptq.RECIPES, kept here so --help needs no torch (tests/test_ptq_stages.py)
RECIPES = ("plan", "minmax", "minmax_pct", "dfq", "dfq_empirical", "adaround", "gptq", "brecq", "datafree")
# the names of mixq.algorithms.ptq.EXTRA_STAGES, likewise
STAGES = ("act_percentile", "first_act_8bit", "dw_act_equalize", "dw_act_clip")



def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        model: str = typer.Argument(..., help=cli.MODEL_HELP),
        weights: str | None = cli.WEIGHTS,
        input_shape: str | None = cli.INPUT_SHAPE,
        plan: Path | None = typer.Option(None, "--plan", help="QuantPlan JSON (default: W8A8 per channel)"),
        calib: str = typer.Option("auto", "--calib", help="image folder (flat or class subfolders), .npz file "
                                                          "(x/images [, y/labels]), 'shipped' (bundled Fashion-MNIST "
                                                          "train images), 'shipped-test', 'photos' (bundled natural "
                                                          "photos), 'fmnist' / 'mnist' (the whole train split; "
                                                          "-test: the test split) or 'auto' (the model's kind)"),
        eval_source: str | None = typer.Option(None, "--eval", help="also report on this source (same kinds as "
                                               "--calib): top-1 of the float and quantized model when it has labels "
                                               "(class subfolders in the model's class order, .npz labels), else "
                                               "argmax agreement of the quantized model with the float one"),
        input_size: str | None = cli.INPUT_SIZE,
        mean: str | None = cli.MEAN,
        std: str | None = cli.STD,
        gray: bool | None = cli.GRAY,
        recipe: str = cli.choice("minmax", "PTQ recipe", RECIPES, "--recipe"),
        out: Path | None = typer.Option(None, "--out", help="output folder (default runs/quantize-MODEL)"),
        images: int = cli.count(256, "calibration images to use", 1, "--images"),
        msq: float | None = cli.real(None, "no --plan: 4-bit MSQ plan with this SP2 row ratio", 0.0, 1.0, "--msq",
                                 low_open=False),
        pretrained: bool = typer.Option(True, "--pretrained/--random", help="real weights or random init"),
        residual_bits: int | None = cli.count(None, "quantize every residual add's output and operands to this many "
                                              "bits (2..16), as the hardware stores its streams (default: the "
                                              "plan's; none keeps them exact, as wide as the sums)", 2,
                                              "--residual-bits", maximum=16),
        weight_scales: str | None = cli.choice(None, "weight scales: the plan's observer, searched per row on the "
                                           "output error, or output below 8 bits (default: the recipe's)",
                                           ("plan", "output", "auto"), "--weight-scales"),
        act_ranges: str | None = cli.choice(None, "activation ranges: the plan's observer or tuned on each layer's "
                                        "output error (default: the recipe's; output for dfq, dfq_empirical)",
                                        ("observer", "output"), "--act-ranges"),
        act_calibration: str | None = cli.choice(None, "activations the range observers see: the network with "
                                             "its weights at nearest rounding, or the float network (for "
                                             "gptq / brecq / adaround, when nearest rounding is far from "
                                             "their result; default: the recipe's)",
                                             ("quantized", "float"), "--act-calibration"),
        msq_rows: str | None = cli.choice(None, "MSQ plans only: rows as assigned, the same count re-chosen on the "
                                      "output error, or each row the format with the smaller output error",
                                      ("plan", "output", "output_auto"), "--msq-rows"),
        stage: list[str] | None = cli.choices("an extra PTQ stage, repeatable: percentile activation clipping, "
                                              "the first activation inside the network at 8 bits, each depthwise "
                                              "input's channels equalized on their ranges / on clips searched per "
                                              "channel on the depthwise output error (no hardware cost)", STAGES,
                                              "--stage"),
        distill: int = cli.count(0, "then distil the quantized network on the float network's predictions for "
                                 "this many Adam steps (biases, weight row scales and activation steps learned on "
                                 "the calibration images; 0: off)", 0, "--distill"),
        device: str = cli.device_option(help="where block reconstruction (--recipe brecq) and --distill run: cpu, "
                                        "cuda or cuda:N"),
        brecq_budget: str = cli.choice("auto", "--recipe brecq: cpu (100 steps of 16 images on 56-px windows), "
                                       "full (the published 400 steps of 32, whole images) or auto (cpu on "
                                       "--device cpu, else full)", ("auto", "cpu", "full"), "--brecq-budget"),
    ) -> None:
        """Quantize MODEL with a plan and a PTQ recipe; write the checkpoint and a summary."""
        from mixq.errors import OptionError
        from mixq.tasks.quantize import QuantizeJob, run_quantize

        if recipe != "brecq" and brecq_budget != "auto":
            raise OptionError(f"--brecq-budget {brecq_budget}: only --recipe brecq takes it (this is {recipe})")
        if recipe != "brecq" and device != "cpu" and not distill:
            raise OptionError(f"--device {device}: only --recipe brecq or --distill takes it (this is {recipe})")
        cli.check_device(device)
        src = cli.model_source(model, weights, input_shape)
        folder = cli.out_dir(out, "quantize", src.name)
        overrides: dict[str, Any] = {k: v for k, v in (("weight_scales", weight_scales), ("act_ranges", act_ranges),
                                                       ("msq_rows", msq_rows), ("act_calibration", act_calibration))
                                     if v is not None}
        if stage:
            overrides["stages"] = tuple(stage)
        if distill:
            from mixq.algorithms.ptq import DistillConfig

            overrides["distill"] = DistillConfig(steps=distill, images=images, device=device)
        if recipe == "brecq":
            from mixq.algorithms.ptq import brecq_budget as budget_config

            budget = brecq_budget if brecq_budget != "auto" else ("cpu" if device == "cpu" else "full")
            overrides["brecq"] = budget_config(budget, device=device)
        done = run_quantize(QuantizeJob(src, folder, plan=plan, msq=msq, recipe=recipe, overrides=overrides,
                                        calib=calib, eval_source=eval_source, images=images,
                                        input_size=input_size, mean=mean, std=std,  # type: ignore[arg-type]
                                        gray=gray, pretrained=pretrained, residual_bits=residual_bits))
        summary, res = done.summary, done.result
        lines = []
        kd = res.details.get("distill")
        if kd is not None:
            lines.append(f"--distill: KL to the float prediction {kd['loss_before']:.4g} -> {kd['loss_after']:.4g} on "
                         f"{kd['images']} calibration images (mirrored included): "
                         + ("tuned model kept" if kd["kept"] == "tuned" else "no better, the start kept"))
        ev = summary.get("eval")
        held = f" ({ev['calibration_images_left_out']} calibration images left out)" \
            if ev is not None and ev.get("calibration_images_left_out") else ""
        if ev is not None and "top1_quant" in ev:
            lines.append(f"--eval {eval_source}: top-1 {ev['top1_quant']:.2f}% quantized, "
                         f"{ev['top1_float']:.2f}% float on {ev['images']} images{held}")
        elif ev is not None:
            lines.append(f"--eval {eval_source}: argmax agreement with the float model "
                         f"{ev['agreement']:.2f}% on {ev['images']} unlabelled images{held}")
        cli.emit({"out": str(folder), **summary},
             [f"{src.name}: recipe {res.recipe.name}, {summary['calibration']['images']} calibration images, "
              f"{done.seconds:.1f} s", *lines,
              f"wrote {folder / 'quantized.pt'}, {folder / 'plan.json'}, {folder / 'summary.json'}",
              f"use it as it is: mixq verify --from {folder}; mixq export --from {folder}"])
