"""``mixq verify`` and ``mixq export``: the integer engine and the exports from the command line.

MODEL is a zoo name. The quantization plan comes from ``--plan plan.json`` or is the
default plan for ``--weight`` / ``--act``. Data: CNV uses the shipped Fashion-MNIST
calibration and test images; ImageNet models use real photos for calibration and the
foolbox ImageNet samples (or more photos) for evaluation, at ``--size``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def prepare(model: str, plan_path: Path | None, weight: str, act: str, size: int | None,
            images: int) -> tuple[Any, Any]:
    """(calibrated fake-quant model, evaluation inputs) for a zoo model."""
    import torch

    from mixq import api, data, zoo
    from mixq.errors import MixqError, ModelError
    from mixq.formats import parse_format
    from mixq.graph.bnfold import fold_bn
    from mixq.plan import load_plan

    torch.manual_seed(0)
    try:
        m = zoo.load(model, pretrained=True)
    except ModelError:
        typer.secho(f"mixq: {model}: no real weights available, using a seeded random init", err=True)
        m = zoo.load(model)
    folded = fold_bn(m.eval())
    if model == "cnv":
        from mixq.run import RunConfig, _load_eval_data

        x, _, calib = _load_eval_data(RunConfig(calib_images=512))
    else:
        c, h, _ = zoo.input_shape(model)
        s = size or h
        if c != 3:
            raise MixqError(f"{model}: only CNV and 3-channel ImageNet models have data here")
        calib = data.calibration_set(64, size=s, seed=0)
        try:
            imgs, _ = data.foolbox_samples("imagenet")
            x = torch.stack([data.imagenet_preprocess(i, resize=max(s * 256 // 224, s), crop=s) for i in imgs])
        except MixqError:
            x = data.calibration_set(max(images, 1), size=s, seed=1)
    x = x[:images]
    plan = load_plan(plan_path) if plan_path is not None else api.default_plan(
        model, folded, calib[:64], weight=parse_format(weight), act=parse_format(act))
    return api.quantize(folded, plan, calib, fold=False), x


def _layer_rows(layers: list[dict[str, Any]]) -> list[str]:
    head = f"{'layer':28s} {'acc bits':>9s} {'differ':>7s} {'code flips':>10s} {'local':>7s}"
    rows = [head]
    for s in layers:
        rows.append(f"{s['layer'][:28]:28s} {s['acc_bits']:>4d}/{s['acc_budget']:<4d} {s['mismatches']:>7d} "
                    f"{100 * s['code_flip_rate']:>9.3f}% {s['local_max_diff_lsb']:>7.3f}")
    return rows


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify_cmd(
        model: str = typer.Argument(..., help="zoo model name (cnv, resnet18, mobilenet_v2, ...)"),
        plan: Path | None = typer.Option(None, "--plan", help="quantization plan (JSON); default: --weight/--act"),
        weight: str = typer.Option("fixed8", help="weight format of the default plan"),
        act: str = typer.Option("ufixed8", help="activation format of the default plan"),
        images: int = typer.Option(256, help="inputs to compare on"),
        size: int | None = typer.Option(None, help="input resolution of ImageNet models (default: the zoo's)"),
        batch_size: int = typer.Option(32, help="inputs per engine batch"),
        mult_bits: int = typer.Option(16, help="width of the dyadic requantization multipliers"),
        acc_bits: int = typer.Option(32, help="accumulator width the hardware provides"),
        overflow: str = typer.Option("error", help="accumulator overflow policy: error or saturate"),
        json_out: Path | None = typer.Option(None, "--json", help="write the full report as JSON"),
    ) -> None:
        """Compare fake quant, hardware-faithful fake quant and the integer engine; exit 1 unless exact."""
        from mixq.engine.verify import verify
        from mixq.io import atomic_write_json

        qmodel, x = prepare(model, plan, weight, act, size, images)
        rep = verify(qmodel, x, batch_size=batch_size, mult_bits=mult_bits, acc_bits=acc_bits, overflow=overflow)
        if json_out is not None:
            atomic_write_json(json_out, rep)
        for line in _layer_rows(rep["layers"]):
            typer.echo(line)
        typer.echo(f"integer engine vs hardware-faithful fake quant: {'EXACT' if rep['exact'] else 'MISMATCH'} "
                   f"({rep['mismatching_outputs']} of {rep['total_outputs']} outputs differ, {rep['images']} inputs)")
        typer.echo(f"vs ordinary fake quant: argmax agreement {100 * rep['argmax_agreement']:.2f}%, "
                   f"max |difference| {rep['max_abs_diff_fakequant']:.4g} (outputs up to "
                   f"{rep['max_abs_output_fakequant']:.4g})")
        if rep["saturated"]:
            typer.echo(f"saturated accumulators: {json.dumps(rep['saturated'])}")
        if not rep["exact"]:
            raise typer.Exit(1)

    @app.command("export")
    def export_cmd(
        model: str = typer.Argument(..., help="zoo model name"),
        fmt: str = typer.Option("int", "--format", help="qonnx, qdq (8-bit) or int (integer model json+npz)"),
        out: Path = typer.Option(..., "--out", help="output file (.onnx, or .json for int)"),
        plan: Path | None = typer.Option(None, "--plan", help="quantization plan (JSON); default: --weight/--act"),
        weight: str = typer.Option("fixed8", help="weight format of the default plan"),
        act: str = typer.Option("ufixed8", help="activation format of the default plan"),
        size: int | None = typer.Option(None, help="input resolution of ImageNet models (default: the zoo's)"),
        check: bool = typer.Option(False, help="run the export in its runtime and compare with mixq"),
        images: int = typer.Option(16, help="inputs for --check"),
    ) -> None:
        """Export a quantized zoo model as QONNX, ONNX QDQ or the integer-model file."""
        from mixq.engine import to_integer
        from mixq.export import EXPORTERS
        from mixq.export.check import check_export

        if fmt not in EXPORTERS:
            from mixq.errors import MixqError

            raise MixqError(f"export format {fmt!r} is not one of {', '.join(EXPORTERS)}")
        qmodel, x = prepare(model, plan, weight, act, size, images)
        im = to_integer(qmodel, x)
        path = EXPORTERS[fmt](im, out)
        typer.echo(f"wrote {path}" + (f" and {path.with_suffix('.npz')}" if fmt == "int" else ""))
        if check:
            res = check_export(fmt, path, qmodel, im, x)
            typer.echo(f"check ({res['runtime']}): max |difference| {res['max_abs_diff']:.4g}, "
                       f"argmax agreement {100 * res['argmax_agreement']:.2f}% on {res['images']} inputs")
